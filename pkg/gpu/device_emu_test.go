//go:build cudaemu

package gpu

import (
	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/gpu/emu"
)

func init() {
	emuDevice = func() cuda.Device { return emu.New(2 << 30) }
	emuNames = emu.Names
}
