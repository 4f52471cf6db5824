// Package plots draws the pictures of training runs as PNG and SVG files:
// for one run (Run.Write) the training loss, the load-balancing loss per
// MoE layer, tokens/s, each MoE layer's expert load over the steps and,
// from the final report, each layer's domain x expert selection
// frequencies; for several runs (Compare) their loss curves on one plot
// and their per-domain validation bits/byte side by side.
//
// It takes what a run already records (train.StepMetrics, the lines of
// metrics.jsonl, and train.Report) and writes files into a directory; it
// reads no files and talks to nothing, so the CLI decides where the
// numbers come from (a local run's --out directory, a coordinator's
// metrics history, the workers' storage).
package plots
