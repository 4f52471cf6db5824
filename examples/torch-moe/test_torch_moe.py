"""Tests of the torch-moe example: LBL maths against golden vectors, the model, and the trainer.

Run from this directory:  /usr/bin/python3 -m unittest -v

* GoldenLBLTest    moe_lbl against every case of testdata/lbl.json: counts, top-k, the
                   micro (a), global (b) and buffered global (c) losses and their gradients,
                   with the data-parallel all-reduce simulated in-process.
* ModelTest        the MoE layer's sorted dispatch against a dense reference.
* EnvTest          --expect-env, --fail-at-start.
* TrainerTest      2-process gloo runs of a tiny model: a run resumed from a checkpoint
                   reproduces the uninterrupted run's metrics exactly; global LBL differs from
                   micro LBL; the Switchyard commit protocol, including a failing commit.

Needs only this directory: the corpus is generated into a temporary directory.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import moe_lbl  # noqa: E402
import train  # noqa: E402
from moe_model import MoE  # noqa: E402

TRAIN = os.path.join(HERE, "train.py")
PYTHON = sys.executable
REL_TOL = 1e-12   # float64 throughout; observed errors are a few ulp
TINY = ["--dim", "64", "--layers", "2", "--heads", "4", "--experts", "4", "--top-k", "2", "--hidden", "128",
        "--seq-len", "64", "--micro-batch", "4", "--accumulation", "2", "--threads", "1"]


def assert_close(test, got, want, what):
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    test.assertEqual(got.shape, want.shape, what)
    err = ((got - want).abs() / want.abs().clamp(min=1e-3)).max().item()
    test.assertLessEqual(err, REL_TOL, f"{what}: relative error {err:.3g}")


def assert_same_state(test, got, want, where):
    """Nested dicts/lists of tensors and scalars are equal, tensors bit for bit."""
    if isinstance(want, torch.Tensor):
        test.assertTrue(torch.equal(got, want), where)
    elif isinstance(want, dict):
        test.assertEqual(sorted(got), sorted(want), where)
        for key in want:
            assert_same_state(test, got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        test.assertEqual(len(got), len(want), where)
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same_state(test, a, b, f"{where}[{i}]")
    else:
        test.assertEqual(got, want, where)


class GoldenLBLTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(HERE, "testdata", "lbl.json")) as fh:
            cls.cases = json.load(fh)["cases"]

    def test_has_cases(self):
        self.assertGreaterEqual(len(self.cases), 20)
        self.assertTrue(any(c["dp_ranks"] > 1 and c["micro_batches"] > 1 for c in self.cases))

    @staticmethod
    def routed(case, r, m):
        """Leaf logits z [T, E] (float64, requires grad), softmax probs, top-k ids of one micro-batch."""
        z = torch.tensor(case["logits"][r][m], dtype=torch.float64, requires_grad=True)
        probs = z.softmax(dim=-1)
        return z, probs, probs.topk(case["k"], dim=-1).indices

    def test_counts_and_topk(self):
        for case in self.cases:
            for r in range(case["dp_ranks"]):
                for m in range(case["micro_batches"]):
                    _, probs, topi = self.routed(case, r, m)
                    self.assertEqual(topi.tolist(), case["topk_indices"][r][m], case["name"])
                    counts = moe_lbl.expert_counts(topi, case["experts"])
                    self.assertEqual(counts.tolist(), case["counts"][r][m], case["name"])
                    assert_close(self, probs.mean(0), case["p"][r][m], case["name"] + " p")

    def test_micro(self):
        for case in self.cases:
            R, M = case["dp_ranks"], case["micro_batches"]
            for r in range(R):
                for m in range(M):
                    z, probs, topi = self.routed(case, r, m)
                    loss, counts = moe_lbl.micro_lbl(probs, topi)
                    self.assertEqual(counts.tolist(), case["counts"][r][m])
                    f = moe_lbl.selection_fraction(counts, case["tokens"], case["k"], torch.float64)
                    assert_close(self, f, case["f_micro"][r][m], case["name"] + " f_micro")
                    assert_close(self, loss.item(), case["loss_micro_per_mb"][r][m], case["name"] + " loss")
                    (loss / (R * M)).backward()
                    assert_close(self, z.grad, case["grad_micro"][r][m], case["name"] + " grad")

    def other_ranks(self, case, r, micro_batches):
        """What the other ranks contribute to an all-reduce of [counts..., tokens]."""
        E, T = case["experts"], case["tokens"]
        total = torch.zeros(E + 1, dtype=torch.int64)
        for other in range(case["dp_ranks"]):
            if other != r:
                for m in micro_batches:
                    total += torch.tensor(case["counts"][other][m] + [T])
        return total

    def simulated_all_reduce(self, addend):
        """An all_reduce callable for one rank that must be called exactly once."""
        calls = []

        def all_reduce(t):
            self.assertEqual(t.dtype, torch.int64)
            calls.append(t.clone())
            return t + addend
        return all_reduce, calls

    def test_global(self):
        for case in self.cases:
            R, M = case["dp_ranks"], case["micro_batches"]
            total = 0.0
            for r in range(R):
                routed = [self.routed(case, r, m) for m in range(M)]
                all_reduce, calls = self.simulated_all_reduce(self.other_ranks(case, r, range(M)))
                losses = moe_lbl.global_batch_lbl([p for _, p, _ in routed], [t for _, _, t in routed], all_reduce)
                self.assertEqual(len(calls), 1, case["name"])
                for m, ((z, _, _), loss) in enumerate(zip(routed, losses)):
                    assert_close(self, loss.item(), case["loss_global_per_mb"][r][m], case["name"] + " loss")
                    (loss / (R * M)).backward()
                    assert_close(self, z.grad, case["grad_global"][r][m], case["name"] + " grad")
                    total += loss.item()
            assert_close(self, total / (R * M), case["lbl_global"], case["name"] + " lbl_global")

    def test_buffered(self):
        for case in self.cases:
            R, M, k = case["dp_ranks"], case["micro_batches"], case["k"]
            total = 0.0
            for r in range(R):
                lbl = moe_lbl.BufferedGlobalLBL(case["experts"], k, None)
                for m in range(M):
                    z, probs, topi = self.routed(case, r, m)
                    # The other ranks' micro-batch m joins this rank's in the all-reduce.
                    lbl.all_reduce, calls = self.simulated_all_reduce(self.other_ranks(case, r, [m]))
                    loss, counts = lbl(probs, topi)
                    self.assertEqual(len(calls), 1, case["name"])
                    self.assertEqual(counts.tolist(), case["counts"][r][m])
                    f = lbl.buffer[:-1].double() / (k * lbl.buffer[-1].item())
                    assert_close(self, f, case["f_buffered"][m], case["name"] + " f_buffered")
                    assert_close(self, loss.item(), case["loss_buffered_per_mb"][r][m], case["name"] + " loss")
                    (loss / (R * M)).backward()
                    assert_close(self, z.grad, case["grad_buffered"][r][m], case["name"] + " grad")
                    total += loss.item()
                lbl.reset()
                self.assertIsNone(lbl.buffer)
            assert_close(self, total / (R * M), case["lbl_buffered"], case["name"] + " lbl_buffered")


class ModelTest(unittest.TestCase):
    def test_dispatch_matches_dense_reference(self):
        """Output and all gradients equal running every expert on every token, masked."""
        torch.manual_seed(0)
        d, h, E, k, N = 16, 24, 8, 3, 50
        moe = MoE(d, h, E, k).double()
        params = list(moe.parameters())
        x0, g = torch.randn(N, d, dtype=torch.float64), torch.randn(N, d, dtype=torch.float64)

        x = x0.clone().requires_grad_()
        out, _, _ = moe(x)
        got = torch.autograd.grad((out * g).sum(), [x] + params, allow_unused=True)

        x = x0.clone().requires_grad_()
        probs = moe.router(x).softmax(-1)
        topw, topi = probs.topk(k, -1)
        combine = torch.zeros(N, E, dtype=torch.float64).scatter(1, topi, topw)
        ref = sum(combine[:, e:e + 1] * moe.expert(e, x) for e in range(E))
        want = torch.autograd.grad((ref * g).sum(), [x] + params, allow_unused=True)

        self.assertTrue(torch.allclose(out, ref, atol=1e-12))
        for a, b in zip(got, want):
            a = torch.zeros(1, dtype=torch.float64) if a is None else a
            b = torch.zeros(1, dtype=torch.float64) if b is None else b
            self.assertTrue(torch.allclose(a, b, atol=1e-10))


def write_corpus(path):
    """A small deterministic corpus of three domains (Python source, arithmetic, prose)."""
    with open(path, "w") as fh:
        for mod in (json, unittest):  # their sources (__init__.py) are the "code_py" domain
            src = mod.__file__
            with open(src, encoding="utf-8") as s:
                fh.write(json.dumps({"domain": "code_py", "source": src, "text": s.read()}) + "\n")
        for i in range(40):
            text = " ".join(f"{a} * {b} = {a * b}." for a in range(i, i + 12) for b in (3, 7))
            fh.write(json.dumps({"domain": "math", "source": "generated", "text": text}) + "\n")
        for i in range(40):
            text = " ".join(f"The {w} number {n} follows {n - 1} and precedes {n + 1}."
                            for w, n in zip(("odd", "even") * 6, range(i, i + 12)))
            fh.write(json.dumps({"domain": "english", "source": "generated", "text": text}) + "\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    """This process' environment without launcher variables, plus extra."""
    drop = set(train.EXPECTED_ENV) | {"SWITCHYARD_RESUME_DIR", "SWITCHYARD_RESUME_STEP", "SWITCHYARD_BIN"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SWITCHYARD_")}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def switchyard_env(rank, world, port, ckpt_dir, attempt=0, **extra):
    """The environment Switchyard gives a rank (one rank per worker)."""
    return clean_env(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                     GROUP_RANK=str(rank), NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                     TORCHELASTIC_RESTART_COUNT=str(attempt), CUDA_VISIBLE_DEVICES="",
                     SWITCHYARD_JOB_ID="job-test", SWITCHYARD_ATTEMPT=str(attempt),
                     SWITCHYARD_CHECKPOINT_DIR=ckpt_dir, **extra)


def metrics(stdout):
    """{step: (raw JSON text, parsed)} of the SWITCHYARD_METRICS lines."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith(train.METRICS_PREFIX):
            text = line[len(train.METRICS_PREFIX):]
            obj = json.loads(text)
            out[obj["step"]] = (text, obj)
    return out


def loss_text(metrics_json):
    """The loss exactly as printed in a metrics line."""
    return re.search(r'"loss": ([^,}]+)', metrics_json).group(1)


def run_ranks(envs, args, timeout=120):
    """Start one train.py per environment, wait for all; [(returncode, stdout, stderr)]."""
    procs = [subprocess.Popen([PYTHON, TRAIN] + args, cwd=HERE, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for env in envs]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def direct_env(rank, world, port):
    return clean_env(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


# A stand-in for `switchyard checkpoints commit --step N DIR`: logs its arguments, checks the
# files, and moves DIR to $SWITCHYARD_CHECKPOINT_DIR/step-N the way a commit may. Exits with
# $FAKE_COMMIT_EXIT (default 0).
FAKE_SWITCHYARD = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_COMMIT_LOG"], "a") as fh:
    fh.write(json.dumps(args) + "\\n")
code = int(os.environ.get("FAKE_COMMIT_EXIT", "0"))
if code:
    print("fake commit refused", file=sys.stderr)
    sys.exit(code)
assert args[:3] == ["checkpoints", "commit", "--step"], args
directory = args[4]
for name in ("model.pt", "optim.pt", "meta.json"):
    assert os.path.isfile(os.path.join(directory, name)), name
os.rename(directory, os.path.join(os.environ["SWITCHYARD_CHECKPOINT_DIR"], "step-" + args[3]))
"""


class EnvTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.env = switchyard_env(0, 2, 29500, self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_check_env(self):
        self.assertIsNone(train.check_env(self.env))
        for name in train.EXPECTED_ENV:
            env = dict(self.env)
            del env[name]
            self.assertIn(name, train.check_env(env))
        bad = {"RANK": "2", "MASTER_PORT": "70000", "LOCAL_RANK": "1", "SWITCHYARD_ATTEMPT": "1",
               "WORLD_SIZE": "x", "SWITCHYARD_CHECKPOINT_DIR": os.path.join(self.tmp.name, "absent"),
               "SWITCHYARD_RESUME_DIR": self.tmp.name}
        for name, value in bad.items():
            self.assertIn(name, train.check_env(dict(self.env, **{name: value})) or "", name)
        env = dict(self.env, SWITCHYARD_RESUME_DIR=self.tmp.name, SWITCHYARD_RESUME_STEP="3")
        self.assertIsNone(train.check_env(env))
        self.assertIsNone(train.check_env(dict(self.env, CUDA_VISIBLE_DEVICES="0")))

    def test_expect_env_rejects_missing_variable(self):
        env = dict(self.env)
        del env["SWITCHYARD_JOB_ID"]
        res = subprocess.run([PYTHON, TRAIN, "--expect-env", "--corpus", "/nonexistent.jsonl"], cwd=HERE,
                             env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(res.returncode, 2, res.stderr)
        self.assertIn("SWITCHYARD_JOB_ID is not set", res.stderr)

    def test_fail_at_start(self):
        res = subprocess.run([PYTHON, TRAIN, "--fail-at-start", "--corpus", "/nonexistent.jsonl"], cwd=HERE,
                             env=self.env, capture_output=True, text=True, timeout=60)
        self.assertEqual(res.returncode, 3, res.stderr)
        self.assertIn("--fail-at-start", res.stderr)


class TrainerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.corpus = os.path.join(cls.tmp.name, "corpus.jsonl")
        write_corpus(cls.corpus)
        cls.fake_bin = os.path.join(cls.tmp.name, "switchyard")
        with open(cls.fake_bin, "w") as fh:
            fh.write(FAKE_SWITCHYARD.format(python=PYTHON))
        os.chmod(cls.fake_bin, 0o755)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check_ok(self, results):
        for rc, _, err in results:
            self.assertEqual(rc, 0, err)
        return results

    def test_resume_reproduces_uninterrupted_run(self):
        """Steps 4..6 of a run resumed at step 3 print exactly the uninterrupted run's metrics.

        The uninterrupted run is a direct launch writing --ckpt-dir/step-<s>; the resumed run is
        launched the way Switchyard does (--expect-env, SWITCHYARD_RESUME_DIR/STEP) and commits
        its step-6 checkpoint through the commit command.
        """
        base = os.path.join(self.tmp.name, "resume")
        direct_dir, job_dir = os.path.join(base, "direct"), os.path.join(base, "job")
        os.makedirs(job_dir)
        args = ["--corpus", self.corpus, "--steps", "6", "--ckpt-every", "3"] + TINY
        port = free_port()
        full = self.check_ok(run_ranks([direct_env(r, 2, port) for r in range(2)],
                                       args + ["--ckpt-dir", direct_dir]))
        full_metrics = metrics(full[0][1])
        self.assertEqual(sorted(full_metrics), [1, 2, 3, 4, 5, 6])
        self.assertEqual(metrics(full[1][1]), {}, "only rank 0 prints metrics")
        self.assertEqual(sorted(os.listdir(direct_dir)), ["step-3", "step-6"])
        self.assertEqual(sorted(os.listdir(os.path.join(direct_dir, "step-3"))),
                         ["meta.json", "model.pt", "optim.pt"])
        first, last = full_metrics[1][1], full_metrics[6][1]
        self.assertLess(last["loss"], first["loss"], "the model learns")
        self.assertEqual(set(first["domain_loss"]), {"code_py", "math", "english"})
        self.assertEqual(len(first["lbl"]), 2)
        for load in first["expert_load"]:
            self.assertEqual(len(load), 4)
            self.assertAlmostEqual(sum(load), 1.0, places=12)

        log = os.path.join(base, "commits.log")
        port = free_port()
        resume = {"SWITCHYARD_RESUME_DIR": os.path.join(direct_dir, "step-3"), "SWITCHYARD_RESUME_STEP": "3",
                  "SWITCHYARD_BIN": self.fake_bin, "FAKE_COMMIT_LOG": log}
        resumed = self.check_ok(run_ranks([switchyard_env(r, 2, port, job_dir, attempt=1, **resume)
                                           for r in range(2)], args + ["--expect-env"]))
        self.assertIn("resumed from step 3", resumed[0][2])
        resumed_metrics = metrics(resumed[0][1])
        self.assertEqual(sorted(resumed_metrics), [4, 5, 6])
        for step in (4, 5, 6):
            got, want = resumed_metrics[step][1], full_metrics[step][1]
            self.assertEqual(loss_text(resumed_metrics[step][0]), loss_text(full_metrics[step][0]),
                             f"step {step}")
            for key in ("lbl", "expert_load", "domain_loss"):
                self.assertEqual(got[key], want[key], f"step {step} {key}")

        with open(log) as fh:
            commits = [json.loads(line) for line in fh]
        staging = os.path.join(job_dir, "staging-attempt-1-step-6")
        self.assertEqual(commits, [["checkpoints", "commit", "--step", "6", staging]])
        self.assertEqual(sorted(os.listdir(job_dir)), ["step-6"])
        for name in ("model.pt", "optim.pt"):
            assert_same_state(self, torch.load(os.path.join(job_dir, "step-6", name)),
                              torch.load(os.path.join(direct_dir, "step-6", name)), name)

    def test_global_lbl_differs_from_micro(self):
        """Same first step in both modes: equal cross-entropy and routing, different LBL.

        Before the first update the modes see the same weights and batches, so everything but
        the LBL value must agree; global mode's f comes from both ranks' counts, micro mode's
        from each micro-batch alone, so the LBL must differ.
        """
        args = ["--corpus", self.corpus, "--steps", "1"] + TINY
        by_mode = {}
        for mode in ("global", "micro"):
            port = free_port()
            res = self.check_ok(run_ranks([direct_env(r, 2, port) for r in range(2)],
                                          args + ["--lbl-mode", mode]))
            by_mode[mode] = metrics(res[0][1])[1]
        (g_text, g), (m_text, m) = by_mode["global"], by_mode["micro"]
        self.assertEqual(loss_text(g_text), loss_text(m_text))
        self.assertEqual(g["expert_load"], m["expert_load"])
        self.assertEqual(g["domain_loss"], m["domain_loss"])
        for layer in range(2):
            self.assertNotAlmostEqual(g["lbl"][layer], m["lbl"][layer], places=9, msg=f"layer {layer}")

    def test_failed_commit_exits_nonzero(self):
        job_dir = os.path.join(self.tmp.name, "failing-job")
        os.makedirs(job_dir)
        log = os.path.join(self.tmp.name, "failing-commits.log")
        env = clean_env(SWITCHYARD_JOB_ID="job-fail", SWITCHYARD_ATTEMPT="2", SWITCHYARD_CHECKPOINT_DIR=job_dir,
                        SWITCHYARD_BIN=self.fake_bin, FAKE_COMMIT_LOG=log, FAKE_COMMIT_EXIT="7")
        args = ["--corpus", self.corpus, "--steps", "3", "--ckpt-every", "1"] + TINY
        (rc, out, err), = run_ranks([env], args)
        self.assertEqual(rc, 1, err)
        self.assertIn("fake commit refused", err)
        self.assertEqual(sorted(metrics(out)), [1], "stops at the first failed commit")
        (rc, out, err), = run_ranks([env], args + ["--on-commit-failure", "continue"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(sorted(metrics(out)), [1, 2, 3])
        with open(log) as fh:
            self.assertEqual(len(fh.readlines()), 4)


if __name__ == "__main__":
    unittest.main()
