# Switchyard — the README's two commands are `make demo` and `make test`.

GO ?= go

.PHONY: build test demo demo-local bench-engine gpu-check image

build:
	$(GO) build -o bin/ ./cmd/switchyard ./cmd/coordinator ./cmd/worker

# The container image (deploy/Dockerfile; deploy/kubernetes/README.md):
# TARGET=gpu adds the CUDA runtime libraries for GPU workers.
IMAGE ?= switchyard:dev
TARGET ?= runtime
DOCKER ?= docker
image:
	$(DOCKER) build -f deploy/Dockerfile --target $(TARGET) -t $(IMAGE) .

# Every package under the race detector (the kernels' tests shrink their
# shapes under -race, see pkg/kernels/race_test.go; GPU tests skip without
# a GPU, saying why), then the GPU engine's tests with its CUDA kernels
# run on the CPU emulator (build tag cudaemu, cgo + C++20) under
# AddressSanitizer: the emulator's device buffers are then exactly their
# size, so a kernel reading or writing past one fails the test (on a GPU
# it would be an illegal address). The emulator's fibers make ASan warn
# that it does not fully support swapcontext; it reports no error.
EMU_ASAN = ASAN_OPTIONS=detect_leaks=0 CGO_ENABLED=1 CGO_CXXFLAGS="-fsanitize=address -O1 -g"
test:
	$(GO) test -race -count=1 -timeout 25m ./...
	$(EMU_ASAN) $(GO) test -asan -tags cudaemu -count=1 -timeout 15m -run 'TestKernel|TestEngine|TestGPU' ./pkg/gpu/... ./pkg/train

# A whole cluster on this machine: a dev coordinator (embedded etcd and
# NATS), two workers, the demo job (tiny, global-batch LBL, DP=2, EP=2).
demo: build
	./bin/switchyard dev --workers 2 --steps 150

# The same model trained in this one process.
demo-local: build
	./bin/switchyard train --preset tiny --steps 120 --lr 2e-3 --warmup 10 --out runs/demo

# On a machine with an NVIDIA GPU and the driver: every GPU test, the
# CPU/GPU equivalence runs and the benchmarks (see scripts/gpu-check.sh;
# build here with Go, then run where the GPU is).
gpu-check:
	scripts/gpu-check.sh build ../shared/bench
	scripts/gpu-check.sh run

bench-engine: build
	./bin/switchyard bench engine --preset tiny --json
	./bin/switchyard bench engine --preset small --json
