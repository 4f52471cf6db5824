//go:build cudaemu

package gpu

import (
	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/gpu/emu"
)

// A binary built with -tags cudaemu (cgo, for tests only) can train on
// the CPU emulator of the kernels: Open returns an emulated GPU when
// SWITCHYARD_GPU_EMULATOR is set. The e2e test of GPU jobs through a
// cluster runs such a binary as the workers' trainer.
func init() {
	openEmulator = func() cuda.Device { return emu.New(8 << 30) }
}
