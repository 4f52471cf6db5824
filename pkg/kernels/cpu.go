package kernels

// CPU feature dispatch. The fastest path the CPU supports is chosen once at
// init; the Ref* kernels in ref.go stay the semantics oracle.

import (
	"fmt"

	"golang.org/x/sys/cpu"
)

// Which code path this process uses.
const (
	pathGeneric = iota
	pathAVX2
	pathAVX512
)

var path = detectPath()

func detectPath() int {
	if !hasAsm {
		return pathGeneric
	}
	switch {
	case cpu.X86.HasAVX512F && cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		return pathAVX512
	case cpu.X86.HasAVX2 && cpu.X86.HasFMA:
		return pathAVX2
	}
	return pathGeneric
}

// Name reports which code path is active: "avx512", "avx2" or "generic".
func Name() string {
	if _, ok := Default().(Reference); ok {
		return "reference"
	}
	switch path {
	case pathAVX512:
		return "avx512"
	case pathAVX2:
		return "avx2"
	}
	return "generic"
}

func init() {
	// Fast is the default whenever the CPU has a vectorised micro-kernel;
	// on other CPUs it still beats the reference (blocked Go kernel).
	SetDefault(NewFast())
}

// Use selects the kernels for the whole process: "auto" (the fastest path
// this CPU has, the default), "generic" (the portable Go kernels: blocked
// Go SGEMM and plain-loop element-wise kernels, no assembly) or
// "reference" (RefSgemm for every GEMM, Go loops otherwise; very slow, for
// checking). Call it before any kernel runs; it is not safe to switch while
// kernels are running.
func Use(name string) error {
	switch name {
	case "auto", "":
		path = detectPath()
		SetDefault(NewFast())
	case "generic":
		path = pathGeneric
		SetDefault(NewFast())
	case "reference":
		path = pathGeneric
		SetDefault(Reference{})
	default:
		return fmt.Errorf("kernels: unknown kernel set %q (have auto, generic, reference)", name)
	}
	return nil
}
