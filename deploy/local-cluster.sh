#!/usr/bin/env bash
# A real multi-process Switchyard cluster on this machine, on loopback:
# etcd and nats-server (the versions pinned in go.mod), three coordinator
# replicas and N workers (default 4), each its own process, all data under
# DIR (default ./local-cluster). Ctrl-C stops everything.
#
#   deploy/local-cluster.sh [DIR] [WORKERS]
#
# then, in another shell:
#   export SWITCHYARD_COORDINATOR=127.0.0.1:7410,127.0.0.1:7420,127.0.0.1:7430 SWITCHYARD_TOKEN=local
#   bin/switchyard cluster status
#   bin/switchyard job submit deploy/examples/job.yaml --watch
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mkdir -p "${1:-local-cluster}" && cd "${1:-local-cluster}" && pwd)
workers=${2:-4}
cd "$root"
go build -o bin/ ./cmd/switchyard ./cmd/coordinator ./cmd/worker
etcd=$(go tool -n go.etcd.io/etcd/server/v3)
nats=$(go tool -n github.com/nats-io/nats-server/v2)
export SWITCHYARD_TOKEN=${SWITCHYARD_TOKEN:-local}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$etcd" --name local --data-dir "$dir/etcd" --log-level warn \
  --listen-client-urls http://127.0.0.1:2479 --advertise-client-urls http://127.0.0.1:2479 \
  --listen-peer-urls http://127.0.0.1:2480 --initial-advertise-peer-urls http://127.0.0.1:2480 \
  --initial-cluster local=http://127.0.0.1:2480 >"$dir/etcd.log" 2>&1 & pids+=($!)
"$nats" -a 127.0.0.1 -p 4322 -js -sd "$dir/nats" >"$dir/nats.log" 2>&1 & pids+=($!)
sleep 1

peers="c1=127.0.0.1:7411,c2=127.0.0.1:7421,c3=127.0.0.1:7431"
for i in 1 2 3; do
  bin/coordinator --id c$i --data-dir "$dir/c$i" --raft-addr 127.0.0.1:74${i}1 --api-addr 127.0.0.1:74${i}0 \
    --bootstrap --peers "$peers" --etcd-endpoints http://127.0.0.1:2479 --nats-url nats://127.0.0.1:4322 \
    --checkpoint-root "$dir/shared/checkpoints" >"$dir/c$i.log" 2>&1 & pids+=($!)
done

mkdir -p "$dir/shared"
for i in $(seq 1 "$workers"); do
  cat >"$dir/w$i.yaml" <<YAML
id: w$i
host: host-$i
coordinators: [127.0.0.1:7410, 127.0.0.1:7420, 127.0.0.1:7430]
etcd_endpoints: [http://127.0.0.1:2479]
nats_url: nats://127.0.0.1:4322
listen_address: 127.0.0.1:75$((10 + i))
resources: {cpu_cores: 1, memory_mib: 2048, gpus: 0}
storage_path: $dir/shared
lease_ttl_seconds: 5
YAML
  bin/worker --config "$dir/w$i.yaml" >"$dir/w$i.log" 2>&1 & pids+=($!)
done

cat <<MSG
cluster up: etcd 127.0.0.1:2479, NATS 127.0.0.1:4322, coordinators 127.0.0.1:7410/7420/7430, $workers workers
logs in $dir/*.log; try:
  export SWITCHYARD_COORDINATOR=127.0.0.1:7410,127.0.0.1:7420,127.0.0.1:7430 SWITCHYARD_TOKEN=$SWITCHYARD_TOKEN
  bin/switchyard cluster status
  bin/switchyard job submit deploy/examples/job.yaml --watch
Ctrl-C stops the cluster.
MSG
wait
