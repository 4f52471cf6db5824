package gpu

import "github.com/switchyard-ml/switchyard/pkg/cuda"

func openTestGPU() (cuda.Device, error) { return Open(0) }
