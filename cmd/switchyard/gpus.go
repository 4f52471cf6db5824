package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
)

// cmdGPUs is `switchyard gpus`: what this machine offers the GPU engine —
// the driver and its devices, and where cuBLASLt, cuBLAS, NCCL and NVML
// were found (or where they were looked for). It fails (status 1) when
// there is no usable driver.
func (c *cli) cmdGPUs(args []string) error {
	fs := flag.NewFlagSet("gpus", flag.ContinueOnError)
	fs.SetOutput(c.errOut)
	asJSON := fs.Bool("json", false, "one JSON object instead of the report")
	fs.Usage = func() {
		fmt.Fprintln(c.errOut, "usage: switchyard gpus [--json]\n\nthe CUDA driver, the GPUs and the libraries the GPU engine loads, with where each was found")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("gpus: unexpected argument %q", fs.Arg(0))}
	}
	info, err := cuda.Probe()
	if *asJSON {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", " ")
		if eerr := enc.Encode(gpusReport(info, err)); eerr != nil {
			return eerr
		}
		return err
	}
	if err != nil {
		for _, l := range info.Libraries { // what was found before the failure
			if l.Err == "" {
				fmt.Fprintf(c.out, "%s: %s\n", l.Name, l.Path)
			}
		}
		return err
	}
	fmt.Fprint(c.out, info)
	return nil
}

// gpusJSON is `gpus --json`.
type gpusJSON struct {
	DriverVersion string       `json:"driver_version,omitempty"` // "12.8": the CUDA version the driver supports
	Devices       []gpuJSON    `json:"devices"`
	Libraries     []gpuLibJSON `json:"libraries"`
	Error         string       `json:"error,omitempty"` // why there is no usable GPU
}

type gpuJSON struct {
	Ordinal           int    `json:"ordinal"`
	Name              string `json:"name"`
	MemoryBytes       int64  `json:"memory_bytes"`
	ComputeCapability string `json:"compute_capability"`
	SMs               int    `json:"sms"`
}

type gpuLibJSON struct {
	Name    string `json:"name"`
	Path    string `json:"path,omitempty"`
	Version int    `json:"version,omitempty"`
	Note    string `json:"note,omitempty"`
	Error   string `json:"error,omitempty"`
}

func gpusReport(info cuda.Info, err error) gpusJSON {
	r := gpusJSON{Devices: []gpuJSON{}, Libraries: []gpuLibJSON{}}
	if info.DriverVersion > 0 {
		r.DriverVersion = fmt.Sprintf("%d.%d", info.DriverVersion/1000, info.DriverVersion%1000/10)
	}
	for _, d := range info.Devices {
		r.Devices = append(r.Devices, gpuJSON{Ordinal: d.Ordinal, Name: d.Name, MemoryBytes: d.TotalMem,
			ComputeCapability: fmt.Sprintf("%d.%d", d.CCMajor, d.CCMinor), SMs: d.SMs})
	}
	for _, l := range info.Libraries {
		r.Libraries = append(r.Libraries, gpuLibJSON{Name: l.Name, Path: l.Path, Version: l.Version, Note: l.Note, Error: l.Err})
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}
