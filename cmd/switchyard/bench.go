package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/switchyard-ml/switchyard/pkg/kernels"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdBench(ctx context.Context, args []string) error {
	const have = "engine, collectives, checkpoint"
	if len(args) == 0 {
		return usageError{errors.New("bench: say what to measure: " + have + " (`switchyard bench NAME --help` lists its flags)")}
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Println("usage: switchyard bench engine|collectives|checkpoint [flags]   (switchyard bench NAME --help lists its flags)")
		return nil
	case "checkpoint":
		fs := flag.NewFlagSet("bench checkpoint", flag.ContinueOnError)
		preset := fs.String("preset", "tiny", "model preset: tiny or small")
		dir := fs.String("dir", "", "checkpoint directory (default: a temporary one)")
		steps := fs.Int("steps", 6, "training steps with a save after each, for the stall figure")
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return usageError{err}
		}
		d := *dir
		if d == "" {
			tmp, err := os.MkdirTemp("", "switchyard-ckpt-bench-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			d = tmp
		}
		b, err := train.BenchCheckpoint(ctx, *preset, d, *steps)
		if err != nil {
			return err
		}
		return printJSON(b)
	case "engine":
		fs := flag.NewFlagSet("bench engine", flag.ContinueOnError)
		preset := fs.String("preset", "tiny", "model preset: tiny, small, medium or science")
		steps := fs.Int("steps", 10, "measured steps")
		warmup := fs.Int("warmup", 3, "warm-up steps")
		device := fs.String("device", "cpu", "cpu, cuda or cuda:N")
		prec := fs.String("precision", "", "GPU arithmetic: bf16 (default on cuda) or fp32")
		micro := fs.Int("micro-batch", 0, "sequences per step (0: the preset's)")
		asJSON := fs.Bool("json", false, "print JSON")
		kern := fs.String("kernels", "auto", "compute kernels: auto, generic or reference")
		cpuProf := fs.String("cpuprofile", "", "write a CPU profile of the measured steps to this file")
		recomp := fs.String("recompute", "", "GPU: none (default) or attention (recompute the attention probabilities in the backward)")
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return usageError{err}
		}
		if err := kernels.Use(*kern); err != nil {
			return usageError{err}
		}
		if *steps < 1 || *warmup < 0 {
			return usageError{fmt.Errorf("bench engine: --steps must be >= 1 and --warmup >= 0")}
		}
		if *cpuProf != "" {
			f, err := os.Create(*cpuProf)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer pprof.StopCPUProfile()
		}
		b, err := train.BenchEngine(ctx, train.BenchOptions{Preset: *preset, Device: *device, Precision: *prec, Warmup: *warmup, Steps: *steps, MicroBatch: *micro, Recompute: *recomp})
		if err != nil {
			if errors.Is(err, train.ErrConfig) {
				return usageError{err}
			}
			return err
		}
		if *asJSON {
			return printJSON(b)
		}
		if b.GPU != "" {
			fmt.Printf("%s on %s (%s): %.0f tokens/s, %.1f TFLOP/s, MFU %.3f of the measured %.0f TFLOP/s GEMM, median step %.3f s, device memory %.1f GiB\n",
				b.Preset, b.GPU, b.Precision, b.TokensPerS, b.GFlops/1e3, b.MFU, b.GemmTFlops, b.MedianStepS, b.DeviceMemGiB)
			return nil
		}
		fmt.Printf("%s: %.0f tokens/s, %.1f GFLOP/s, median step %.3f s, peak RSS %.0f MiB, %.0f allocs/step (%s kernels, %d threads)\n",
			b.Preset, b.TokensPerS, b.GFlops, b.MedianStepS, b.PeakRSSMiB, b.AllocsPerStep, b.Kernels, b.Threads)
		return nil
	case "collectives":
		return cmdBenchCollectives(ctx, args[1:])
	default:
		return usageError{fmt.Errorf("bench: unknown benchmark %q (have: %s)", args[0], have)}
	}
}
