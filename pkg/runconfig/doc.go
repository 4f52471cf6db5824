// Package runconfig is the configuration of one training process (a rank):
// the model, the optimizer, the losses, the data, checkpoints and the
// rank's place in the parallel layout. It is what `switchyard train
// --config` reads, what the worker writes for each rank it starts (from
// the job spec and the coordinator's task, by pkg/jobspec), and what the
// engine packages (pkg/model, pkg/optim, pkg/train) alias.
//
// It depends on nothing of the engine, so the coordinator can validate
// job specs without linking gorgonia or the compute kernels.
//
// Decoding is strict (unknown fields are errors). A zero field means its
// default, except where zero is a value of its own: lbl.coef (0: no
// balancing loss, for an aux-loss-free run with lbl.bias_rate) and the
// AdamW betas keep an explicit 0; only an absent key takes the default.
package runconfig
