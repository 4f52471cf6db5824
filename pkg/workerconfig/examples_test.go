package workerconfig

import (
	"os"
	"strings"
	"testing"
)

// The example config in deploy/ parses and validates (its TLS files need
// not exist for that).
func TestDeployExampleParses(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/examples/worker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "gpu-17-0" || len(c.Coordinators) != 3 || c.TLS.CA == "" {
		t.Fatalf("parsed %+v", c)
	}
}

// The 8-GPU node's example declares one slot per GPU, each on its port.
func TestDeploy8GPUExample(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/examples/worker-8gpu.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	c.Resources.GPUs = 8 // what nvidia-smi finds there
	if err := c.Validate(); err != nil && !strings.Contains(err.Error(), "tls.") {
		t.Fatal(err) // only the TLS files are missing here
	}
	if c.SlotCount() != 8 || !c.AllowCommands || len(c.SlotGPUs(7)) != 1 || c.SlotGPUs(7)[0] != 7 {
		t.Fatalf("slots %d, slot 7's GPUs %v", c.SlotCount(), c.SlotGPUs(7))
	}
}
