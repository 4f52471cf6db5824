package devcomm

// GPU tests: they run where a GPU opens and skip, with the reason, where
// none does (SWITCHYARD_REQUIRE_GPU=1 makes that a failure, for the GPU
// machine). scripts/gpu-check.sh runs them.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

// openGPUs opens every GPU the driver shows (one Context each).
func openGPUs(t *testing.T) []*cuda.Context {
	t.Helper()
	c, err := cuda.Open(cuda.Options{})
	if err != nil {
		if errors.Is(err, cuda.ErrNoDevice) && os.Getenv("SWITCHYARD_REQUIRE_GPU") == "" {
			t.Skip("no GPU: " + err.Error())
		}
		t.Fatal(err)
	}
	ctxs := []*cuda.Context{c}
	t.Cleanup(func() {
		for _, c := range ctxs {
			if err := c.Close(); err != nil {
				t.Error(err)
			}
		}
	})
	info, err := cuda.Probe()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(info.Devices); i++ {
		o, err := cuda.Open(cuda.Options{Ordinal: i})
		if err != nil {
			t.Fatal(err)
		}
		ctxs = append(ctxs, o)
	}
	return ctxs
}

// onGPUs runs f for ranks placed on the given Contexts over loopback gRPC.
func onGPUs(t *testing.T, place []*cuda.Context, f func(r int, dev *cuda.Context, g *parallel.Comm) error) {
	t.Helper()
	group(t, len(place), func(r int, g *parallel.Comm) error { return f(r, place[r], g) })
}

// TestGPUNCCLMatchesHost: on the device, NCCL (one rank per GPU: world 1
// here, more where the machine has more GPUs) and the host-staged
// collectives give the exact results of collectiveChecks; two ranks on
// one GPU choose host-staged collectives by themselves (NCCL refuses a
// GPU shared by two ranks) and give them too.
func TestGPUNCCLMatchesHost(t *testing.T) {
	ctxs := openGPUs(t)
	ctx := context.Background()
	for _, want := range []Backend{NCCL, Host} {
		t.Run(fmt.Sprintf("%s/%d GPUs", want, len(ctxs)), func(t *testing.T) {
			onGPUs(t, ctxs, func(r int, dev *cuda.Context, g *parallel.Comm) error {
				c, err := Open(ctx, dev, g, want, UsesAllReduce|UsesAllToAll)
				if err != nil {
					return err
				}
				defer c.Close()
				t.Logf("rank %d: %s", r, c.Describe())
				return collectiveChecks(ctx, dev, c, 1<<20+5)
			})
		})
	}
	t.Run("two ranks on one GPU", func(t *testing.T) {
		onGPUs(t, []*cuda.Context{ctxs[0], ctxs[0]}, func(r int, dev *cuda.Context, g *parallel.Comm) error {
			c, err := Open(ctx, dev, g, Auto, UsesAllReduce|UsesAllToAll)
			if err != nil {
				return err
			}
			defer c.Close()
			if c.Backend() != Host || !strings.Contains(c.Describe(), "share GPU "+dev.UUID()) {
				return fmt.Errorf("%s: %s", c.Backend(), c.Describe())
			}
			return collectiveChecks(ctx, dev, c, 1<<20+5)
		})
	})
	if len(ctxs) > 1 {
		t.Run("auto picks NCCL", func(t *testing.T) {
			onGPUs(t, ctxs, func(r int, dev *cuda.Context, g *parallel.Comm) error {
				c, err := Open(ctx, dev, g, Auto, UsesAllReduce|UsesAllToAll)
				if err != nil {
					return err
				}
				defer c.Close()
				if c.Backend() != NCCL {
					return fmt.Errorf("%s: %s", c.Backend(), c.Describe())
				}
				return nil
			})
		})
	}
}
