package gpu

import (
	"os"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
)

// emuDevice and emuNames are set by the cudaemu build (pkg/gpu/emu); nil
// otherwise.
var (
	emuDevice func() cuda.Device
	emuNames  func() []string
)

// testDevice is the device GPU tests run on: the CPU emulator in a cudaemu
// build, else the first NVIDIA GPU; without either the test is skipped
// with the reason.
func testDevice(t *testing.T) cuda.Device {
	t.Helper()
	if emuDevice != nil {
		d := emuDevice()
		t.Cleanup(func() { d.Close() })
		return d
	}
	d, err := openTestGPU()
	if err != nil {
		if os.Getenv("SWITCHYARD_REQUIRE_GPU") != "" {
			t.Fatalf("SWITCHYARD_REQUIRE_GPU is set and the GPU does not open: %v", err)
		}
		t.Skipf("no GPU: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}
