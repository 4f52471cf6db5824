//go:build cudaemu

package train

import (
	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/gpu/emu"
)

func init() { emuDevice = func() cuda.Device { return emu.New(4 << 30) } }
