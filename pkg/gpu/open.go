package gpu

import (
	"fmt"
	"os"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/gpu/kernels"
)

// EmulatorEnv, set in the environment of a binary built with the cudaemu
// tag, makes Open return the CPU emulator of the kernels (pkg/gpu/emu)
// instead of a GPU: for end-to-end tests of GPU jobs on machines without
// one. The default build has no emulator and ignores it.
const EmulatorEnv = "SWITCHYARD_GPU_EMULATOR"

// openEmulator is set in cudaemu builds (open_emu.go).
var openEmulator func() cuda.Device

// Open opens GPU ordinal (as CUDA counts them, after CUDA_VISIBLE_DEVICES)
// with the engine's kernels loaded: the sm_90 PTX on Hopper and newer,
// sm_80 on Ampere and Ada. Without a driver, a device or cuBLASLt the
// error says what was looked for and where.
func Open(ordinal int) (cuda.Device, error) {
	if openEmulator != nil && os.Getenv(EmulatorEnv) != "" {
		return openEmulator(), nil
	}
	info, err := cuda.Probe()
	if err != nil {
		return nil, err
	}
	var dev *cuda.DeviceInfo
	for i := range info.Devices {
		if info.Devices[i].Ordinal == ordinal {
			dev = &info.Devices[i]
		}
	}
	if dev == nil {
		return nil, fmt.Errorf("%w: no GPU %d (the driver sees %d)", cuda.ErrNoDevice, ordinal, len(info.Devices))
	}
	ptx, _, err := kernels.PTX(dev.CCMajor, dev.CCMinor)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", cuda.ErrNoDevice, dev.Name, err)
	}
	c, err := cuda.Open(cuda.Options{Ordinal: ordinal, Module: ptx})
	if err != nil {
		return nil, err
	}
	return c, nil
}
