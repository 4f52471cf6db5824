// Package data owns the training data of a run: reading a JSON Lines corpus
// into documents, the built-in demo corpus (Go source from GOROOT plus
// generated domains), packing documents into fixed-length byte-token
// sequences split per domain into train and validation, and the deterministic
// loader that turns (seed, position) into a stream of training sequence
// indices and shards each global batch across data-parallel ranks.
//
// Tokens are bytes (vocabulary 256). UTF-8 text never contains the byte 0xFF,
// so DocSep (0xFF) ends every document in a packed stream.
//
// The package does no I/O beyond reading the corpus file and, for the demo
// corpus, the Go source tree. It knows nothing about models, devices,
// parallel layouts beyond (rank, world) of a batch, or checkpoints: callers
// store a Loader's Position in their checkpoint and restore it with Seek.
package data
