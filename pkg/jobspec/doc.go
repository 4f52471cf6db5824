// Package jobspec owns the job spec: the YAML document a user submits with
// `switchyard job submit spec.yaml`, its defaults, its validation, and its
// mapping onto the scheduler's view of a job (pkg/scheduler) and onto each
// rank's configuration (pkg/runconfig): RankConfig turns (spec, task,
// host) into the run.yaml a worker writes for a rank, AttemptLayout is the
// elastic layout arithmetic, ValidJobID the one job id rule.
//
// The spec is a stable, user-facing format that is stored in the
// coordinator's replicated log, so it has its own types rather than
// re-using the training packages' structs (the model section included): a
// field added to or renamed in runconfig.Model does not change what
// stored specs parse. A future format gets a new version number. Decoding
// is strict: unknown fields, repeated keys and more than one YAML document
// are errors.
//
// # Fields and defaults
//
//	version           absent or 1 (the only format so far)
//	name              required; 1-63 of [a-z0-9-], starting and ending with a
//	                  letter or digit (the job id rule, ValidJobID)
//	priority          0; in [-1000, 1000]; higher runs first
//	model.preset      "tiny" when no model field is given; "tiny", "small",
//	                  "medium" (GPU-sized) or "science" (32 fine-grained experts, top-4,
//	                  for balancing sweeps on CPUs)
//	model.<field>     overrides the preset's field when non-zero; without a
//	                  preset the fields describe the whole model: vocab, dim, layers, heads, seq_len,
//	                  experts, top_k, hidden, shared_experts, moe_every,
//	                  dense_hidden, capacity_factor, renormalize, norm_eps,
//	                  rope_base, init_std
//	parallel.tp/dp/ep 1 each; world = tp*dp ranks
//	parallel.balance  "dp"; the LBL balance group: "dp", "node" (the DP ranks
//	                  on one worker host) or "none"
//	lbl.mode          "global"; or "micro"
//	lbl.window        0: the global LBL counts every micro-batch of the step; N: the
//	                  buffer starts again every N micro-batches, so the balance
//	                  batch is micro_batch x N x the balance group's ranks sequences
//	lbl.coef          0.01 when absent; an explicit 0 is kept (an
//	                  aux-loss-free run balanced by bias_rate); micro_coef, seq_coef,
//	                  z_coef, bias_rate 0; layer_coef empty (all 1) or one
//	                  value per MoE layer
//	data.corpus       "demo" (the built-in corpus) or an absolute path that
//	                  every worker can read (a JSON Lines file)
//	data.demo_bytes   1 MiB per domain; data.val_fraction 0.05; data.eval_seqs 0 (all)
//	data.order        "shuffled" (every micro-batch mixes the domains at random) or
//	                  "domain" (every micro-batch of each rank holds one domain, the
//	                  global batch mixes them: where micro and global LBL part ways)
//	                  or "domain_mixed" (domain's global batches, each step's sequences
//	                  dealt at random to its micro-batches: the random-subset control)
//	optim             lr 3e-4, min_lr 0, warmup_steps 0, weight_decay 0,
//	                  clip_norm 0 (off), beta1 0.9, beta2 0.999 (an explicit
//	                  0 is kept for both), eps 1e-8
//	micro_batch       the preset's (tiny 8, small 4, medium 16, science 8);
//	                  required without a preset
//	accumulation      1; steps 100; seed 1 (0 means the default); eval_every 0 (only at the end)
//	device            "cpu"; or "cuda": each rank trains on a GPU of its worker
//	precision         on cuda "bf16" (mixed; the default) or "fp32"; the CPU
//	                  engine is fp32
//	collectives       "auto" (NCCL when every rank has a GPU of its own, else
//	                  host-staged), "nccl" or "host"; only with device cuda
//	recompute         "none"; or "attention" (the attention probabilities
//	                  computed again in the backward); only with device cuda
//	resources         per rank; when the section is empty: cpu_cores 1,
//	                  memory_mib 2048, gpus 0 (0 requests none; memory_mib 0:
//	                  no memory limit); device cuda makes gpus 1 when it is 0,
//	                  before that rule, so that a cuda job without the section
//	                  asks cpu_cores 0 and memory_mib 0; gpu_memory_mib 0
//	                  (the least memory each of a rank's GPUs must have, for
//	                  placement; a device cuda engine job asks at least the
//	                  engine's bound, runconfig.Model.MinGPURankBytes)
//	placement         host_labels {} (every worker of the job must carry them)
//	checkpoint        interval_steps 0 and interval_minutes 0 (no periodic
//	                  checkpoints), keep_last 3, keep_best 0, storage "dir",
//	                  path "" (the worker's storage path); storage "s3" needs
//	                  path "s3://bucket[/prefix]"
//	restart           max_restarts 3, backoff_seconds 10 (0 is honoured for both)
//	elastic           min_dp = max_dp = parallel.dp (not elastic)
//	runtime           "engine" (also when absent): the built-in MoE trainer,
//	                  configured by the fields above; or "command"
//
// # Command jobs (runtime: command)
//
// A command job runs any program, one process per rank, with a
// torchrun-compatible environment (see package agent and `switchyard
// exec`). Its fields:
//
//	command           required: a program on the worker's PATH, an absolute
//	                  path, or a path relative to working_dir
//	args              its arguments; env: variables added to the rank's
//	                  environment (not RANK, MASTER_PORT, ... nor SWITCHYARD_*,
//	                  which Switchyard sets: ReservedEnv)
//	working_dir       absolute; default the rank's run directory
//	ranks             1; processes, one per worker slot; the layout is dp = ranks
//	steps             0 (not known); when given, commits past it are refused
//	checkpoint        storage "dir" only; keep_last as for the engine;
//	                  keep_best by the validation loss the trainer gives
//	                  `checkpoints commit --val-loss`; the intervals are the
//	                  trainer's business
//
// resources, placement, restart, elastic (on ranks), priority and name are
// as for the engine. The engine's keys (model, parallel, lbl, data, optim,
// micro_batch, accumulation, seed, eval_every, device, precision,
// collectives, recompute) are refused: a command's trainer takes its settings in
// args. CommandRank turns (spec, task, host) into the rank's
// CommandConfig.
//
// # Errors
//
// Validate reports every broken rule, each as a *FieldError wrapping
// ErrInvalid and printed as "jobspec: <path> = <value>: <rule>", for example
// "jobspec: parallel.ep = 3: must divide parallel.dp = 4"; several are joined
// with errors.Join, one per line. Syntax errors wrap ErrSyntax.
//
// The package does not talk to the network, read corpora or start training;
// it must not import the coordinator, the worker, the parallel runtime or
// the engine (the coordinator binary links it and none of those).
package jobspec
