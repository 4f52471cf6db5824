package workerconfig

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Detector tells what the machine has. A nil field is not detected: the
// value must then be configured.
type Detector struct {
	Hostname  func() (string, error)
	CPUCores  func() int
	MemoryMiB func() (int64, error)
	GPUs      func() ([]GPU, error)
}

// SystemDetector detects with os.Hostname, runtime.NumCPU, /proc/meminfo
// and nvidia-smi.
func SystemDetector() Detector {
	return Detector{
		Hostname:  os.Hostname,
		CPUCores:  runtime.NumCPU,
		MemoryMiB: func() (int64, error) { return memInfoMiB("/proc/meminfo") },
		GPUs:      func() ([]GPU, error) { return DetectGPUs(nil) },
	}
}

// GPU is one device as nvidia-smi reports it.
type GPU struct {
	Index     int    `json:"index"`
	UUID      string `json:"uuid,omitempty"`
	Name      string `json:"name"`
	MemoryMiB int64  `json:"memory_mib"`
}

// NvidiaSMIArgs are the arguments DetectGPUs runs nvidia-smi with.
var NvidiaSMIArgs = []string{"--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader"}

// DetectGPUs runs nvidia-smi (through run; nil runs the real binary with a
// 10 s timeout) and parses its output. Without nvidia-smi on PATH there are
// no GPUs and no error; nvidia-smi failing is an error.
func DetectGPUs(run func(name string, args ...string) ([]byte, error)) ([]GPU, error) {
	if run == nil {
		if _, err := exec.LookPath("nvidia-smi"); err != nil {
			return nil, nil
		}
		run = func(name string, args ...string) ([]byte, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, name, args...)
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return nil, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
			}
			return out, nil
		}
	}
	out, err := run("nvidia-smi", NvidiaSMIArgs...)
	if err != nil {
		return nil, fmt.Errorf("nvidia-smi: %w", err)
	}
	return ParseNvidiaSMI(out)
}

// ParseNvidiaSMI parses `nvidia-smi --query-gpu=index,uuid,name,
// memory.total --format=csv,noheader` output: one "0, GPU-5d1c..., NVIDIA
// H100 80GB HBM3, 81559 MiB" line per GPU. Blank lines are skipped; memory
// "[N/A]" is 0.
func ParseNvidiaSMI(out []byte) ([]GPU, error) {
	var gpus []GPU
	sc := bufio.NewScanner(bytes.NewReader(out))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		// The name may contain commas: index and uuid are the first
		// fields, memory the last.
		f := strings.SplitN(line, ",", 3)
		last := strings.LastIndex(line, ",")
		if len(f) < 3 || !strings.Contains(f[2], ",") {
			return nil, fmt.Errorf("nvidia-smi line %d %q: want index, uuid, name, memory.total", n, line)
		}
		idx, err := strconv.Atoi(strings.TrimSpace(f[0]))
		if err != nil || idx < 0 {
			return nil, fmt.Errorf("nvidia-smi line %d %q: bad index", n, line)
		}
		uuid := strings.TrimSpace(f[1])
		if !strings.HasPrefix(uuid, "GPU-") && !strings.HasPrefix(uuid, "MIG-") {
			return nil, fmt.Errorf("nvidia-smi line %d %q: bad uuid %q (want GPU-... or MIG-...)", n, line, uuid)
		}
		g := GPU{Index: idx, UUID: uuid, Name: strings.TrimSpace(line[len(f[0])+len(f[1])+2 : last])}
		mem := strings.TrimSpace(line[last+1:])
		if mem != "[N/A]" {
			num, unit, _ := strings.Cut(mem, " ")
			v, err := strconv.ParseInt(num, 10, 64)
			if err != nil || v < 0 || (unit != "MiB" && unit != "") {
				return nil, fmt.Errorf("nvidia-smi line %d %q: bad memory.total", n, line)
			}
			g.MemoryMiB = v
		}
		gpus = append(gpus, g)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("nvidia-smi output: %w", err)
	}
	return gpus, nil
}

// memInfoMiB reads MemTotal from a /proc/meminfo file.
func memInfoMiB(path string) (int64, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseMemInfo(raw)
}

func parseMemInfo(raw []byte) (int64, error) {
	for line := range strings.SplitSeq(string(raw), "\n") {
		rest, ok := strings.CutPrefix(line, "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("meminfo: bad MemTotal line %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("meminfo: bad MemTotal line %q", line)
		}
		return kb / 1024, nil
	}
	return 0, errors.New("meminfo: no MemTotal")
}
