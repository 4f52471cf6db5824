package gpu

import (
	"fmt"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/gpu/kernels"
)

// Open opens GPU ordinal (as CUDA counts them, after CUDA_VISIBLE_DEVICES)
// with the engine's kernels loaded: the sm_90 PTX on Hopper and newer,
// sm_80 on Ampere and Ada. Without a driver, a device or cuBLASLt the
// error says what was looked for and where.
func Open(ordinal int) (cuda.Device, error) {
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
