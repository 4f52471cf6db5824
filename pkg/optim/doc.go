// Package optim owns the optimizer: AdamW over a flat parameter buffer,
// the learning-rate schedule (linear warmup, cosine decay) and global-norm
// gradient clipping. It knows nothing about models beyond named ranges of
// the flat buffers.
package optim
