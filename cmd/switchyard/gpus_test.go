package main

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
)

// TestGPUsCommand: on a machine without a GPU (CI), `gpus` fails saying
// where it looked for the driver, in text and in JSON; on one with a GPU
// it lists the devices and the libraries.
func TestGPUsCommand(t *testing.T) {
	_, probeErr := cuda.Probe()
	r := runCmd(t, false, "gpus")
	j := runCmd(t, false, "gpus", "--json")
	var got gpusJSON
	if err := json.Unmarshal([]byte(j.stdout), &got); err != nil {
		t.Fatalf("gpus --json: %v\n%s", err, j.stdout)
	}
	if probeErr != nil {
		wantCode(t, r, exitFailure)
		wantCode(t, j, exitFailure)
		wantContains(t, r.stderr, "libcuda.so.1 not found (looked in SWITCHYARD_CUDA_LIB_DIR")
		if got.Error == "" || len(got.Devices) != 0 || len(got.Libraries) != 1 || got.Libraries[0].Name != "the CUDA driver" || got.Libraries[0].Error != got.Error {
			t.Errorf("gpus --json without a driver: %+v", got)
		}
	} else {
		wantCode(t, r, exitOK)
		wantCode(t, j, exitOK)
		wantContains(t, r.stdout, "device 0:", "cuBLASLt: ", "NCCL", "NVML")
		if got.Error != "" || len(got.Devices) == 0 || len(got.Libraries) != 5 {
			t.Errorf("gpus --json: %+v", got)
		}
	}
	wantCode(t, runCmd(t, false, "gpus", "extra"), exitUsage)
}

// TestGPUsReport: the JSON view of what Probe found.
func TestGPUsReport(t *testing.T) {
	info := cuda.Info{DriverVersion: 12080,
		Devices: []cuda.DeviceInfo{{Ordinal: 0, Name: "NVIDIA H100 80GB HBM3", TotalMem: 85 << 30, CCMajor: 9, CCMinor: 0, SMs: 132}},
		Libraries: []cuda.LibraryInfo{{Name: "the CUDA driver", Path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1"},
			{Name: "cuBLASLt", Path: "/opt/w/libcublasLt.so.12", Version: 120604}, {Name: "NCCL", Err: "NCCL not found (looked in ...)"}}}
	want := gpusJSON{DriverVersion: "12.8",
		Devices: []gpuJSON{{Ordinal: 0, Name: "NVIDIA H100 80GB HBM3", MemoryBytes: 85 << 30, ComputeCapability: "9.0", SMs: 132}},
		Libraries: []gpuLibJSON{{Name: "the CUDA driver", Path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1"},
			{Name: "cuBLASLt", Path: "/opt/w/libcublasLt.so.12", Version: 120604}, {Name: "NCCL", Error: "NCCL not found (looked in ...)"}}}
	if got := gpusReport(info, nil); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if got := gpusReport(cuda.Info{}, errors.New("no NVIDIA driver")); got.Error != "no NVIDIA driver" || got.Devices == nil || got.Libraries == nil {
		t.Errorf("without a driver: %+v", got)
	}
}
