#!/usr/bin/env bash
# Regenerates the PTX into a temporary directory and diffs it against the
# committed files; exits non-zero when they differ (CI, like proto/check.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$here/gen.sh" "$tmp"
status=0
for f in kernels_sm_80.ptx kernels_sm_90.ptx; do
  if ! diff -q "$here/$f" "$tmp/$f" >/dev/null; then
    echo "check.sh: $f is stale; run pkg/gpu/kernels/gen.sh" >&2
    diff -u "$here/$f" "$tmp/$f" | head -40 >&2 || true
    status=1
  fi
done
exit $status
