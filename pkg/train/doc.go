// Package train owns one process's training run: the run configuration
// (YAML), the loop (micro-batches with gradient accumulation, AdamW with
// warmup and cosine decay, clipping), progress output, metrics (JSON Lines)
// and the final report (per-domain validation bits/byte and per-layer expert
// specialisation). It composes pkg/model, pkg/lbl, pkg/optim and pkg/data
// and does not know about processes, networks or the control plane.
package train
