# Switchyard — the README's two commands are `make demo` and `make test`.

GO ?= go

.PHONY: build test demo demo-local bench-engine

build:
	$(GO) build -o bin/ ./cmd/switchyard ./cmd/coordinator ./cmd/worker

# Every package under the race detector; the kernels' tests shrink their
# shapes under -race (see pkg/kernels/race_test.go).
test:
	$(GO) test -race -count=1 -timeout 25m ./...

# A whole cluster on this machine: a dev coordinator (embedded etcd and
# NATS), two workers, the demo job (tiny, global-batch LBL, DP=2, EP=2).
demo: build
	./bin/switchyard dev --workers 2 --steps 150

# The same model trained in this one process.
demo-local: build
	./bin/switchyard train --preset tiny --steps 120 --lr 2e-3 --warmup 10 --out runs/demo

bench-engine: build
	./bin/switchyard bench engine --preset tiny --json
	./bin/switchyard bench engine --preset small --json
