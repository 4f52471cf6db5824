# Switchyard — the two commands of the README are `make demo` and `make test`.

GO ?= go
# Numeric packages run without -race (their inner loops are 10-50x slower
# under the race detector and share no goroutines across the API); they get
# a separate short race pass over their concurrency (parallelFor, kernels' pool).
NUMERIC := ./pkg/model/... ./pkg/kernels/... ./pkg/train/...

.PHONY: build test demo bench-engine

build:
	$(GO) build -o bin/switchyard ./cmd/switchyard

test:
	$(GO) test -race $$($(GO) list ./... | grep -v -e /pkg/model -e /pkg/kernels -e /pkg/train)
	$(GO) test $(NUMERIC)
	$(GO) test -race -short -run 'Race|Concurrent' $(NUMERIC)

demo: build
	./bin/switchyard train --preset tiny --steps 60 --out runs/demo

bench-engine: build
	./bin/switchyard bench engine --preset tiny --json
	./bin/switchyard bench engine --preset small --json
