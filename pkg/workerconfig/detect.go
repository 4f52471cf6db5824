package workerconfig

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
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
	// Links is how it reaches each other GPU of the worker, by their
	// index, as `nvidia-smi topo -m` says: "NV18" (18 bonded NVLinks),
	// or a PCIe path: "PIX", "PXB", "PHB", "NODE", "SYS". Empty where the
	// topology could not be read.
	Links map[int]string `json:"links,omitempty"`
}

// NvidiaSMIArgs are the arguments DetectGPUs runs nvidia-smi with.
var NvidiaSMIArgs = []string{"--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader"}

// TopoArgs are the arguments DetectGPUs reads the GPUs' links with.
var TopoArgs = []string{"topo", "-m"}

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
	gpus, err := ParseNvidiaSMI(out)
	if err != nil || len(gpus) < 2 {
		return gpus, err
	}
	// the links where they can be read: a machine whose nvidia-smi
	// cannot print them still has its GPUs
	if out, err := run("nvidia-smi", TopoArgs...); err == nil {
		if links, err := ParseTopo(out); err == nil {
			for i := range gpus {
				gpus[i].Links = links[gpus[i].Index]
			}
		}
	}
	return gpus, nil
}

// ansiEscape matches the terminal escapes (underline, bold) nvidia-smi
// puts in its topology table.
var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// ParseTopo parses `nvidia-smi topo -m`: a tab-separated matrix whose
// header names the columns (GPU0, GPU1, ..., then NICs and affinities)
// and whose rows "GPUi" say how GPU i reaches each column ("X" itself,
// "NV#" bonded NVLinks, "PIX", "PXB", "PHB", "NODE", "SYS": PCIe paths),
// then a legend. It returns, per GPU index, the link to every other GPU.
func ParseTopo(out []byte) (map[int]map[int]string, error) {
	gpuIndex := func(s string) (int, bool) {
		n, ok := strings.CutPrefix(s, "GPU")
		if !ok {
			return 0, false
		}
		i, err := strconv.Atoi(n)
		return i, err == nil && i >= 0
	}
	var cols []int // the header's columns from GPU0 on: a GPU index, or -1
	links := map[int]map[int]string{}
	for n, line := range strings.Split(ansiEscape.ReplaceAllString(string(out), ""), "\n") {
		f := strings.Split(strings.TrimRight(line, "\r"), "\t")
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		if cols == nil {
			h := slices.Index(f, "GPU0")
			if h < 0 || slices.Contains(f, "X") {
				continue // before the header
			}
			for _, c := range f[h:] {
				i, ok := gpuIndex(c)
				if !ok {
					i = -1
				}
				cols = append(cols, i)
			}
			continue
		}
		me, ok := gpuIndex(f[0])
		if !ok {
			if f[0] == "" || strings.HasPrefix(f[0], "Legend") {
				break // the matrix ended
			}
			continue // a NIC's row
		}
		row := map[int]string{}
		for c, j := range cols {
			if j < 0 {
				continue
			}
			if c+1 >= len(f) || f[c+1] == "" {
				return nil, fmt.Errorf("nvidia-smi topo line %d %q: no link from GPU%d to GPU%d", n+1, line, me, j)
			}
			if v := f[c+1]; j != me {
				row[j] = v
			} else if v != "X" {
				return nil, fmt.Errorf("nvidia-smi topo line %d %q: GPU%d to itself is %q, want X", n+1, line, me, v)
			}
		}
		links[me] = row
	}
	if cols == nil {
		return nil, fmt.Errorf("nvidia-smi topo: no GPU0 column header in %q", strings.TrimSpace(string(out)))
	}
	return links, nil
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
