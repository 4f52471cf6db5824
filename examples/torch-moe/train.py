#!/usr/bin/python3
"""Data-parallel trainer for a byte-level MoE language model, as a Switchyard job or torchrun-style.

One process per rank. Launched by Switchyard (which sets the torchrun variables plus
SWITCHYARD_*), or directly:

    RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 /usr/bin/python3 train.py --corpus c.jsonl ...
    RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 /usr/bin/python3 train.py --corpus c.jsonl ...

Without WORLD_SIZE (or with WORLD_SIZE=1) it runs as a single process with no process group.
torch.distributed uses gloo on CPU and NCCL with --device cuda (rank r uses cuda:LOCAL_RANK).

Per optimizer step s (counted from 1) every rank runs --accumulation micro-batches, each
drawn from the corpus at positions that depend only on (seed, s, rank, micro-batch), so a
resumed run sees the batches an uninterrupted one would. Gradients are averaged over the
ranks with one all-reduce per step; every rank then takes the same AdamW step. The loss is
cross-entropy + lbl_coef * sum over MoE layers of the load-balancing loss (moe_lbl.py),
global-batch (default) or micro-batch.

Protocols (README.md has the details):
  metrics      rank 0 prints one line per optimizer step to stdout:
               SWITCHYARD_METRICS {"step", "loss", "tokens_per_s", "lbl", "expert_load", "domain_loss"}
  checkpoints  every --ckpt-every steps rank 0 writes model.pt, optim.pt and meta.json into
               $SWITCHYARD_CHECKPOINT_DIR/staging-attempt-$SWITCHYARD_ATTEMPT-step-<s>
               (direct runs: --ckpt-dir/step-<s>); under Switchyard it then runs
               `$SWITCHYARD_BIN checkpoints commit --step <s> <dir>`.
  resume       from SWITCHYARD_RESUME_DIR at SWITCHYARD_RESUME_STEP (direct runs: --resume-dir).

Exit status: 0 done; 1 checkpoint commit failed; 2 bad arguments, environment or checkpoint;
3 --fail-at-start.
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moe_lbl import BufferedGlobalLBL, micro_lbl
from moe_model import CONFIGS, MoELM

METRICS_PREFIX = "SWITCHYARD_METRICS "
MODEL_FILE, OPTIM_FILE, META_FILE = "model.pt", "optim.pt", "meta.json"
CHECKPOINT_FORMAT = 1

# Variables --expect-env requires (CUDA_VISIBLE_DEVICES may be empty; all others may not).
EXPECTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK",
                "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "SWITCHYARD_JOB_ID",
                "SWITCHYARD_ATTEMPT", "SWITCHYARD_CHECKPOINT_DIR", "CUDA_VISIBLE_DEVICES")


class UsageError(Exception):
    """A bad argument, environment variable or checkpoint: the process exits with status 2."""


def log(msg: str) -> None:
    print(f"train.py: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- arguments
def parse_args(argv: List[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = ap.add_argument_group("model (a --config, then overrides)")
    model.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    model.add_argument("--dim", type=int, help="model width d")
    model.add_argument("--layers", type=int, help="number of transformer blocks")
    model.add_argument("--heads", type=int, help="attention heads")
    model.add_argument("--experts", type=int, help="experts per MoE layer E")
    model.add_argument("--top-k", type=int, help="experts per token k")
    model.add_argument("--hidden", type=int, help="expert SwiGLU hidden width")
    model.add_argument("--seq-len", type=int, help="tokens (bytes) per sequence")
    model.add_argument("--micro-batch", type=int, help="sequences per micro-batch per rank")
    tr = ap.add_argument_group("training")
    tr.add_argument("--corpus", required=True, help="JSONL, one {\"domain\", \"source\", \"text\"} per line")
    tr.add_argument("--steps", type=int, default=100, help="optimizer steps to reach (default 100)")
    tr.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    tr.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    tr.add_argument("--seed", type=int, default=1234, help="seeds the initial weights and the batches")
    tr.add_argument("--lbl-mode", default="global", choices=["global", "micro"],
                    help="global: f from the all-reduced counts of the step so far (buffered global-batch "
                         "LBL); micro: f from this rank's micro-batch (default global)")
    tr.add_argument("--lbl-coef", type=float, default=0.01, help="load-balancing loss coefficient (default 0.01)")
    tr.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    tr.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, for determinism)")
    ck = ap.add_argument_group("checkpoints")
    ck.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every K optimizer steps (0 = never)")
    ck.add_argument("--ckpt-dir", help="direct runs: write checkpoints to DIR/step-<s> "
                                       "(ignored when SWITCHYARD_CHECKPOINT_DIR is set)")
    ck.add_argument("--resume-dir", help="direct runs: resume from this checkpoint directory "
                                         "(ignored when SWITCHYARD_RESUME_DIR is set)")
    ck.add_argument("--on-commit-failure", default="exit", choices=["exit", "continue"],
                    help="when `switchyard checkpoints commit` fails: exit 1 on every rank (default; the "
                         "orchestrator restarts the attempt) or log it and keep training")
    hooks = ap.add_argument_group("checks and test hooks")
    hooks.add_argument("--expect-env", action="store_true",
                       help="require the Switchyard/torchrun environment; exit 2 naming the bad variable")
    hooks.add_argument("--fail-at-start", action="store_true", help="exit 3 at once (tests restart handling)")
    hooks.add_argument("--never-commit", action="store_true",
                       help="write checkpoint directories but never run the commit command")
    hooks.add_argument("--sleep-per-step", type=float, default=0.0, metavar="SECONDS",
                       help="sleep after every optimizer step (lets tests kill a worker mid-job)")
    args = ap.parse_args(argv)
    for name in ("steps", "accumulation", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if args.ckpt_every < 0:
        ap.error("--ckpt-every must be >= 0")
    return args


def model_config(args: argparse.Namespace) -> Dict[str, int]:
    c = dict(CONFIGS[args.config])
    for key in c:
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be at least 1")
            c[key] = value
    return c


# ----------------------------------------------------------------------------- environment
def check_env(env) -> Optional[str]:
    """None when env is a consistent Switchyard/torchrun rank environment, else what is wrong."""
    for name in EXPECTED_ENV:
        if name not in env:
            return f"{name} is not set"
        if name != "CUDA_VISIBLE_DEVICES" and env[name] == "":
            return f"{name} is empty"
    ints = {}
    for name, low in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1),
                      ("GROUP_RANK", 0), ("NODE_RANK", 0), ("MASTER_PORT", 1),
                      ("TORCHELASTIC_RESTART_COUNT", 0), ("SWITCHYARD_ATTEMPT", 0)):
        try:
            ints[name] = int(env[name])
        except ValueError:
            return f"{name}={env[name]!r} is not an integer"
        if ints[name] < low:
            return f"{name}={ints[name]} is below {low}"
    if ints["MASTER_PORT"] > 65535:
        return f"MASTER_PORT={ints['MASTER_PORT']} is above 65535"
    if ints["RANK"] >= ints["WORLD_SIZE"]:
        return f"RANK={ints['RANK']} is not below WORLD_SIZE={ints['WORLD_SIZE']}"
    if ints["LOCAL_RANK"] >= ints["LOCAL_WORLD_SIZE"]:
        return f"LOCAL_RANK={ints['LOCAL_RANK']} is not below LOCAL_WORLD_SIZE={ints['LOCAL_WORLD_SIZE']}"
    if ints["LOCAL_WORLD_SIZE"] > ints["WORLD_SIZE"]:
        return f"LOCAL_WORLD_SIZE={ints['LOCAL_WORLD_SIZE']} is above WORLD_SIZE={ints['WORLD_SIZE']}"
    if ints["SWITCHYARD_ATTEMPT"] != ints["TORCHELASTIC_RESTART_COUNT"]:
        return (f"SWITCHYARD_ATTEMPT={ints['SWITCHYARD_ATTEMPT']} differs from "
                f"TORCHELASTIC_RESTART_COUNT={ints['TORCHELASTIC_RESTART_COUNT']}")
    if not os.path.isdir(env["SWITCHYARD_CHECKPOINT_DIR"]):
        return f"SWITCHYARD_CHECKPOINT_DIR={env['SWITCHYARD_CHECKPOINT_DIR']!r} is not a directory"
    has_dir, has_step = "SWITCHYARD_RESUME_DIR" in env, "SWITCHYARD_RESUME_STEP" in env
    if has_dir != has_step:
        present, missing = (("SWITCHYARD_RESUME_DIR", "SWITCHYARD_RESUME_STEP") if has_dir
                            else ("SWITCHYARD_RESUME_STEP", "SWITCHYARD_RESUME_DIR"))
        return f"{missing} is not set but {present} is"
    if has_dir:
        if not os.path.isdir(env["SWITCHYARD_RESUME_DIR"]):
            return f"SWITCHYARD_RESUME_DIR={env['SWITCHYARD_RESUME_DIR']!r} is not a directory"
        try:
            if int(env["SWITCHYARD_RESUME_STEP"]) < 0:
                raise ValueError
        except ValueError:
            return f"SWITCHYARD_RESUME_STEP={env['SWITCHYARD_RESUME_STEP']!r} is not a non-negative integer"
    return None


class Dist:
    """This rank's place in the data-parallel group; collectives are no-ops in a world of one."""

    def __init__(self, device_kind: str):
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not 0 <= self.rank < self.world:
            raise UsageError(f"RANK={self.rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={self.world})")
        if device_kind == "cuda":
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if not os.environ.get(name):
                    raise UsageError(f"{name} is not set (needed when WORLD_SIZE > 1)")
            dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", init_method="env://",
                                    rank=self.rank, world_size=self.world)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all ranks, in place; returns t."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.world > 1:
            dist.broadcast(t, src)
        return t

    def barrier(self) -> None:
        """A one-element all-reduce on this rank's device (NCCL's barrier() has to guess the GPU)."""
        self.all_reduce_sum(torch.zeros(1, device=self.device))

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- data
class Corpus:
    """The corpus texts as one byte string, in file order, each text followed by b"\\n".

    Remembers where each text starts and its domain, so every sampled sequence can be
    attributed to the domain of the text it starts in.
    """

    def __init__(self, path: str):
        chunks, starts, domain_of_doc = [], [], []
        self.domains: List[str] = []
        index: Dict[str, int] = {}
        offset = 0
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    text, domain = obj["text"], str(obj["domain"])
                except (ValueError, KeyError, TypeError) as e:
                    raise UsageError(f"{path}:{lineno}: not a {{\"domain\", \"text\"}} object ({e})")
                data = text.encode("utf-8") + b"\n"
                if domain not in index:
                    index[domain] = len(self.domains)
                    self.domains.append(domain)
                chunks.append(data)
                starts.append(offset)
                domain_of_doc.append(index[domain])
                offset += len(data)
        self.data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8) if offset else None
        self.doc_starts = torch.tensor(starts, dtype=torch.int64)
        self.doc_domain = torch.tensor(domain_of_doc, dtype=torch.int64)

    def __len__(self) -> int:
        return 0 if self.data is None else self.data.numel()

    def batch(self, seed: int, step: int, rank: int, micro: int, batch: int, seq_len: int):
        """(inputs [B, T], targets [B, T], domain id per sequence [B]), int64 on the CPU.

        The positions depend only on (seed, step, rank, micro).
        """
        g = torch.Generator().manual_seed(batch_seed(seed, step, rank, micro))
        starts = torch.randint(0, len(self) - seq_len, (batch,), generator=g)
        seqs = self.data[starts.unsqueeze(1) + torch.arange(seq_len + 1)].long()
        doc = torch.searchsorted(self.doc_starts, starts, right=True) - 1
        return seqs[:, :-1], seqs[:, 1:], self.doc_domain[doc]


def batch_seed(seed: int, step: int, rank: int, micro: int) -> int:
    """A 63-bit generator seed for one micro-batch, a hash of its coordinates."""
    digest = hashlib.sha256(f"torch-moe/{seed}/{step}/{rank}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


# ----------------------------------------------------------------------------- checkpoints
def _save_atomic(path: str, write) -> None:
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(directory: str, model, opt, meta: dict) -> None:
    """Write model.pt, optim.pt and meta.json into directory (created if needed)."""
    os.makedirs(directory, exist_ok=True)
    _save_atomic(os.path.join(directory, MODEL_FILE), lambda p: torch.save(model.state_dict(), p))
    _save_atomic(os.path.join(directory, OPTIM_FILE), lambda p: torch.save(opt.state_dict(), p))

    def write_meta(p):
        with open(p, "w") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
            fh.write("\n")
    _save_atomic(os.path.join(directory, META_FILE), write_meta)


def load_checkpoint(directory: str, model, opt, config: dict) -> dict:
    """Load model and optimizer state from directory; returns its meta.json."""
    try:
        with open(os.path.join(directory, META_FILE)) as fh:
            meta = json.load(fh)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise UsageError(f"{directory}: checkpoint format {meta.get('format')!r}, "
                             f"this trainer reads {CHECKPOINT_FORMAT}")
        if meta.get("config") != config:
            raise UsageError(f"{directory}: checkpoint of model {meta.get('config')}, this run is {config}")
        model.load_state_dict(torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu"))
        opt.load_state_dict(torch.load(os.path.join(directory, OPTIM_FILE), map_location="cpu"))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UsageError(f"cannot resume from {directory}: {e}")
    return meta


def commit_checkpoint(step: int, directory: str) -> Tuple[bool, str]:
    """Run `switchyard checkpoints commit --step <step> <directory>`; (succeeded, its stderr)."""
    cmd = [os.environ.get("SWITCHYARD_BIN") or "switchyard", "checkpoints", "commit", "--step", str(step),
           directory]
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        return False, f"cannot run {cmd[0]}: {e}"
    return res.returncode == 0, res.stderr.strip() or f"{' '.join(cmd)} exited {res.returncode}"


# ----------------------------------------------------------------------------- training
def average_gradients(model, dp: Dist) -> None:
    """Make every parameter's gradient the mean over the ranks (zero where none was produced).

    An expert no token chose has no gradient on some ranks; filling in zeros keeps the
    optimizer's view of the parameters identical on all ranks. One all-reduce of a flat buffer.
    """
    params = list(model.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if dp.world == 1:
        for p, g in zip(params, grads):
            p.grad = g
        return
    flat = dp.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])).div_(dp.world)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p)
        offset += n


def finite(x: float) -> Optional[float]:
    """JSON has no NaN or infinity: report those as null."""
    return x if math.isfinite(x) else None


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    if args.fail_at_start:
        log("--fail-at-start: exiting with status 3")
        return 3
    if args.expect_env:
        problem = check_env(os.environ)
        if problem:
            log(f"--expect-env: {problem}")
            return 2
    config = model_config(args)

    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        # cuBLAS needs this for reproducible results; it must be set before CUDA initialises.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if not torch.cuda.is_available():
            raise UsageError("--device cuda but CUDA is not available")
    # On CPU every op used here has a deterministic kernel; on CUDA warn instead of failing
    # should a kernel lack one.
    torch.use_deterministic_algorithms(True, warn_only=args.device == "cuda")
    dp = Dist(args.device)
    try:
        return train(args, config, dp)
    finally:
        dp.close()


def train(args: argparse.Namespace, config: Dict[str, int], dp: Dist) -> int:
    """The training loop from the start or the resumed step to --steps; returns the exit status."""
    ckpt_root = os.environ.get("SWITCHYARD_CHECKPOINT_DIR")
    if args.ckpt_every and not ckpt_root and not args.ckpt_dir:
        raise UsageError("--ckpt-every needs --ckpt-dir or SWITCHYARD_CHECKPOINT_DIR")
    corpus = Corpus(args.corpus)
    if len(corpus) <= config["seq_len"]:
        raise UsageError(f"{args.corpus} has {len(corpus)} bytes, need more than --seq-len {config['seq_len']}")
    L, E, B, T, A = (config["layers"], config["experts"], config["micro_batch"], config["seq_len"],
                     args.accumulation)
    n_domains = len(corpus.domains)

    torch.manual_seed(args.seed)
    model = MoELM(config).to(dp.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)

    start_step = 0
    resume_dir = os.environ.get("SWITCHYARD_RESUME_DIR") or args.resume_dir
    if resume_dir:
        meta = load_checkpoint(resume_dir, model, opt, config)
        start_step = meta["step"]
        if "SWITCHYARD_RESUME_STEP" in os.environ and int(os.environ["SWITCHYARD_RESUME_STEP"]) != start_step:
            raise UsageError(f"SWITCHYARD_RESUME_STEP={os.environ['SWITCHYARD_RESUME_STEP']} but "
                             f"{resume_dir}/{META_FILE} holds step {start_step}")
        if meta.get("world_size") != dp.world and dp.rank == 0:
            log(f"warning: checkpoint written by {meta.get('world_size')} ranks, resuming with {dp.world}: "
                f"batches differ from an uninterrupted run")
        log(f"resumed from step {start_step}")
    # All ranks start from rank 0's weights (they are equal already; this guards against drift).
    for t in list(model.parameters()):
        dp.broadcast_(t.data)

    if args.lbl_mode == "global":
        buffers = [BufferedGlobalLBL(E, config["top_k"], dp.all_reduce_sum) for _ in range(L)]
        balance = lambda layer, probs, topi: buffers[layer](probs, topi)  # noqa: E731
    else:
        buffers = []
        balance = lambda layer, probs, topi: micro_lbl(probs, topi)  # noqa: E731

    commit = bool(os.environ.get("SWITCHYARD_JOB_ID")) and not args.never_commit
    meta_base = dict(format=CHECKPOINT_FORMAT, config=config, world_size=dp.world, seed=args.seed,
                     accumulation=A, lr=args.lr, lbl_mode=args.lbl_mode, lbl_coef=args.lbl_coef,
                     corpus=os.path.basename(args.corpus), torch=torch.__version__)

    model.train()
    for step in range(start_step + 1, args.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for buf in buffers:
            buf.reset()
        # Step statistics, summed over micro-batches here and over ranks below:
        # [CE sum, LBL sum per layer (L), counts (L*E), domain CE sums (D), domain sequence counts (D)]
        stats = torch.zeros(1 + L + L * E + 2 * n_domains, dtype=torch.float64, device=dp.device)
        for micro in range(A):
            x, y, dom = corpus.batch(args.seed, step, dp.rank, micro, B, T)
            x, y, dom = x.to(dp.device), y.to(dp.device), dom.to(dp.device)
            ce_seq, lbls, counts = model(x, y, balance)
            ce = ce_seq.mean()
            lbl = torch.stack(lbls)
            ((ce + args.lbl_coef * lbl.sum()) / A).backward()
            with torch.no_grad():
                stats[0] += ce.double()
                stats[1:1 + L] += lbl.double()
                stats[1 + L:1 + L + L * E] += torch.stack(counts).reshape(-1).double()
                d0 = 1 + L + L * E
                in_domain = F.one_hot(dom, n_domains).double()            # [B, D]
                stats[d0:d0 + n_domains] += in_domain.t() @ ce_seq.double()
                stats[d0 + n_domains:] += in_domain.sum(dim=0)
        average_gradients(model, dp)
        opt.step()
        stats = dp.all_reduce_sum(stats).cpu()
        elapsed = time.perf_counter() - t0

        if dp.rank == 0:
            report(step, stats, dp.world * A, elapsed, dp.world * A * B * T, L, E, corpus.domains)
        if args.ckpt_every and step % args.ckpt_every == 0:
            if ckpt_root:
                directory = os.path.join(
                    ckpt_root, f"staging-attempt-{os.environ.get('SWITCHYARD_ATTEMPT', '0')}-step-{step}")
            else:
                directory = os.path.join(args.ckpt_dir, f"step-{step}")
            if not checkpoint(step, directory, model, opt, dict(meta_base, step=step), dp, commit,
                              args.on_commit_failure):
                return 1
        if args.sleep_per_step > 0:
            time.sleep(args.sleep_per_step)
    return 0


def report(step: int, stats: torch.Tensor, n_micro: int, elapsed: float, tokens: int, L: int, E: int,
           domains: List[str]) -> None:
    """Print the step's metrics line (stdout) and a human summary (stderr). Rank 0 only.

    stats: the all-reduced step statistics of train(); n_micro: micro-batches over all ranks.
    """
    counts = stats[1 + L:1 + L + L * E].view(L, E)
    d0 = 1 + L + L * E
    dom_sum, dom_n = stats[d0:d0 + len(domains)], stats[d0 + len(domains):]
    metrics = {
        "step": step,
        "loss": finite(stats[0].item() / n_micro),
        "tokens_per_s": tokens / elapsed,
        "lbl": [finite(v / n_micro) for v in stats[1:1 + L].tolist()],
        "expert_load": (counts / counts.sum(dim=1, keepdim=True)).tolist(),
        "domain_loss": {d: finite(s / n) for d, s, n in zip(domains, dom_sum.tolist(), dom_n.tolist()) if n > 0},
    }
    print(METRICS_PREFIX + json.dumps(metrics), flush=True)
    lbl = " ".join(f"{v:.4f}" for v in metrics["lbl"] if v is not None)
    log(f"step {step} loss {stats[0].item() / n_micro:.4f} lbl [{lbl}] {metrics['tokens_per_s']:.0f} tokens/s")


def checkpoint(step: int, directory: str, model, opt, meta: dict, dp: Dist, commit: bool,
               on_failure: str) -> bool:
    """Write (rank 0), barrier, commit (rank 0), agree on the outcome. False: exit with status 1."""
    if dp.rank == 0:
        save_checkpoint(directory, model, opt, meta)
    dp.barrier()
    if not commit:
        if dp.rank == 0:
            log(f"checkpoint step {step} written to {directory} (not committed)")
        return True
    ok = torch.ones(1, dtype=torch.int64, device=dp.device)
    if dp.rank == 0:
        succeeded, err = commit_checkpoint(step, directory)
        if succeeded:
            log(f"checkpoint step {step} committed from {directory}")
        else:
            log(f"checkpoint step {step}: commit failed: {err}")
            ok.zero_()
    # Doubles as the barrier after the commit: no rank runs ahead of it.
    dp.broadcast_(ok)
    if ok.item():
        return True
    if on_failure == "continue":
        if dp.rank == 0:
            log("--on-commit-failure=continue: training on")
        return True
    if dp.rank != 0:
        log(f"rank 0 failed to commit the checkpoint of step {step}; exiting")
    return False


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UsageError as e:
        log(str(e))
        sys.exit(2)
