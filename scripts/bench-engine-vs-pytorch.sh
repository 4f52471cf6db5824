#!/usr/bin/env bash
# Measures `switchyard bench engine` and the PyTorch reference
# (moe_bench.py) back to back, for each preset, and prints one JSON object
# per preset with the ratio.
#
#   scripts/bench-engine-vs-pytorch.sh PATH/TO/shared/bench [tiny small]
#
# Needs Debian's python3-torch, libopenblas0-openmp and libjemalloc2
# (apt-get install -y python3-torch libopenblas0-openmp libjemalloc2).
# Debian's torch has no MKL: it multiplies matrices with whatever
# libblas.so.3 provides, and without OpenBLAS that is the reference BLAS
# (about 8 GFLOP/s, 30-50x slower than OpenBLAS here): a baseline that
# says nothing. The script loads the OpenMP build of OpenBLAS explicitly
# (one thread pool with PyTorch's, OMP_WAIT_POLICY=ACTIVE), drops an
# OPENBLAS_CORETYPE from the environment (a forced Haswell costs 30-40% on
# an AVX-512 CPU) and prints the BLAS torch loaded. Absolute numbers on a
# shared 2-core machine drift by 10-30% between hours; the ratio from one
# back-to-back run is the figure to quote.
set -euo pipefail
bench_dir=${1:?usage: $0 PATH/TO/shared/bench [presets...]}
shift
presets=${*:-tiny small}
root=$(cd "$(dirname "$0")/.." && pwd)
openblas=/usr/lib/x86_64-linux-gnu/openblas-openmp
if [ ! -e "$openblas/libblas.so.3" ]; then
  echo "$openblas/libblas.so.3 not found: apt-get install -y libopenblas0-openmp (without it torch uses the reference BLAS, about 8 GFLOP/s)" >&2
  exit 1
fi
torch_env=(env -u OPENBLAS_CORETYPE LD_LIBRARY_PATH="$openblas" OMP_WAIT_POLICY=ACTIVE
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
  MALLOC_CONF="oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1")
# the BLAS the PyTorch runs below load, said once
"${torch_env[@]}" /usr/bin/python3 -c 'import torch, re
maps = open("/proc/self/maps").read()
print("pytorch", torch.__version__, "BLAS:", sorted(set(m for m in re.findall(r"\S*/lib\w*blas\w*[.]so[.\w]*", maps))))' >&2
go build -o "$root/bin/switchyard" "$root/cmd/switchyard"
out=$(mktemp -d)
for p in $presets; do
  "$root/bin/switchyard" bench engine --preset "$p" --json > "$out/sy-$p.json"
  "${torch_env[@]}" /usr/bin/python3 -B "$bench_dir/moe_bench.py" --config "$p" --procs 1 --no-wait-idle --out "$out" > "$out/pt-$p.log" 2>&1 || true
  pt=$(grep -h '^RESULT_JSON' "$out/pt-$p.log" | tail -1 | sed 's/^RESULT_JSON *//')
  if [ -z "$pt" ]; then echo "PyTorch run failed:"; cat "$out/pt-$p.log"; exit 1; fi
  /usr/bin/python3 - "$out/sy-$p.json" "$pt" "$p" <<'PY'
import json, sys
sy = json.load(open(sys.argv[1])); pt = json.loads(sys.argv[2])
ptok = pt.get("tokens_per_s") or pt.get("tok_per_s") or pt.get("tokens_per_sec")
print(json.dumps({"preset": sys.argv[3], "switchyard_tokens_per_s": round(sy["tokens_per_s"], 1),
  "pytorch_tuned_tokens_per_s": ptok, "ratio": round(sy["tokens_per_s"] / ptok, 3) if ptok else None,
  "switchyard_gflops": round(sy["gflops"], 1), "fraction_of_sgemm": round(sy["fraction_of_sgemm"], 3),
  "sgemm_ceiling_gflops": round(sy["sgemm_ceiling_gflops"], 1), "split_s": sy["split_s"],
  "allocs_per_step": sy["allocs_per_step"], "peak_rss_mib": round(sy["peak_rss_mib"]), "pytorch": pt}))
PY
done
