package workerconfig

import (
	"os"
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
