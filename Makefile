# Switchyard — the README's two commands are `make demo` and `make test`.

GO ?= go

.PHONY: build test demo bench-engine

build:
	$(GO) build -o bin/switchyard ./cmd/switchyard

# Every package under the race detector; the kernels' tests shrink their
# shapes under -race (see pkg/kernels/race_test.go).
test:
	$(GO) test -race -count=1 ./...

demo: build
	./bin/switchyard train --preset tiny --steps 120 --lr 2e-3 --warmup 10 --out runs/demo

bench-engine: build
	./bin/switchyard bench engine --preset tiny --json
	./bin/switchyard bench engine --preset small --json
