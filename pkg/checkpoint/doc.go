// Package checkpoint owns the storage half of checkpoints: where shard
// bytes go, how they are proven whole, and which checkpoints exist.
//
//   - Storage is a small blob interface (Put/Get/Delete/List/Stat over
//     slash keys) whose Put is atomic and durable. DirStorage (a local or
//     shared filesystem: temp file, fsync, rename, fsync the directory) and
//     MemStorage implement it; package checkpointtest holds the contract
//     test every backend must pass.
//   - A shard is one named blob under StepPrefix(job, step), e.g.
//     "job-7/step-000000001200/rank-0003/params.bin". SaveShards (or
//     SaveShardsParallel, several at a time) writes shards and returns
//     their sizes and SHA-256s, hashed while writing; Verify re-reads them.
//     WriteShard/ReadShard are the tensor shard file format (magic "SWYD",
//     a JSON table, little-endian float32 data), strict on input.
//   - A Manifest lists a checkpoint's shards with their hashes, the layout
//     it was saved under and the job spec. A Catalogue commits manifests:
//     only newer steps, deletion marked before files go. MemCatalogue,
//     StorageCatalogue and EtcdCatalogue (production: one etcd transaction
//     per change, safe across processes) implement it. A Fencing
//     catalogue (MemCatalogue, EtcdCatalogue) also tells a job's attempts
//     apart: once the next attempt is fenced, a write of an earlier one
//     still in flight is refused (ErrFenced).
//   - Manager runs the lifecycle over a Storage and a Catalogue: Save and
//     Commit (commit only after every shard verifies), LoadLatestVerified
//     (newest checkpoint that verifies; corrupt ones are reported and
//     skipped), Delete and ResumeDeletions, Retain, CollectGarbage.
//   - Failpoint marks the crash points of a save and a deletion for the
//     crash tests (SWITCHYARD_FAILPOINTS).
//
// This package does not know what the shards contain: capturing and
// restoring trainer state, resharding between layouts, and async saving
// belong to the trainer (package train). It must not import the trainer,
// the model or the coordinator.
package checkpoint
