// Package cuda is the engine's boundary with an NVIDIA GPU.
//
// It owns:
//
//   - the Device interface (device.go): memory, copies, kernel launches,
//     GEMMs and timing on one stream, and the sentinel errors every
//     implementation wraps;
//   - Context, the real implementation, which drives one GPU through the
//     CUDA driver (libcuda.so.1), cuBLASLt (Gemm) and cuBLAS (GemmGrouped).
//     The libraries are loaded at run time with purego: no cgo, no CUDA
//     toolkit at build time. discover.go finds them (SWITCHYARD_CUDA_LIB_DIR,
//     LD_LIBRARY_PATH, the system loader, fixed folders, then the nvidia-*
//     wheels of Python installations); Probe reports what it found;
//   - NCCL (nccl.go): one rank's communicator on a Context (OpenNCCL),
//     with the unique id made by one rank (NewNCCLID) and carried to the
//     others by the caller; all-reduce, reduce-scatter, all-gather,
//     broadcast and all-to-all-v (grouped sends and receives) enqueued on
//     the Context's stream, and Wait, which aborts the communicator when
//     NCCL reports a failure or the caller gives up;
//   - one file per foreign library (driver.go, cublaslt.go, cublas.go,
//     nccl.go) with the C signature of every function it binds; result
//     codes become Go errors in one place (errors.go; NCCL's in nccl.go).
//     Nothing else in the tree calls purego for these libraries.
//
// The package has one kernel of its own, kernels/gemmscale.cu (the K == 0
// case of Gemm, D = Beta*C); the engine's kernels are the caller's PTX
// module (Options.Module).
//
// It must not touch: the model, the layout or the schedule (it knows
// nothing about experts or layers); other GPUs (one Context is one device;
// which collective runs where, and the id's exchange, belong to
// pkg/devcomm); the primary context's flags or the device's settings (it
// retains the primary context and releases it on Close, nothing more);
// and the caller's host memory beyond the call (CopyHtoD stages through
// pinned memory of its own, so src may be reused on return).
//
// Threading: CUDA contexts are current per OS thread. Every method locks
// the Context, pins the goroutine to its OS thread and makes the context
// current before calling the driver, so methods may be called from any
// goroutine. All work goes to the legacy NULL stream, so it is ordered.
package cuda
