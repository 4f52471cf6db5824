package cuda

// Tests of the NCCL bindings without a GPU: testdata/fakenccl.c, built
// here with the machine's C compiler, has NCCL's C interface with ranks
// as threads and host memory as "device" memory, and checks what the Go
// side must get right: the by-value id of ncclCommInitRank, the stream on
// the stack, the counts and offsets of every collective, and the groups
// of sends and receives of all-to-all-v. The real library is tested on
// the GPU machine (gpu_test.go, TestGPUNCCL).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// fakeLibrary builds testdata/SRC into a shared library named soname
// with the machine's C compiler and opens it.
func fakeLibrary(src, soname string) (*library, error) {
	var cc string
	for _, c := range []string{"cc", "gcc", "clang", "clang-16"} {
		if p, err := exec.LookPath(c); err == nil {
			cc = p
			break
		}
	}
	if cc == "" {
		return nil, fmt.Errorf("no C compiler (cc, gcc, clang or clang-16) to build testdata/%s; install gcc", src)
	}
	dir, err := os.MkdirTemp("", "fakelib")
	if err != nil {
		return nil, err
	}
	so := filepath.Join(dir, soname)
	if out, err := exec.Command(cc, "-shared", "-fPIC", "-O1", "-pthread", "-o", so, filepath.Join("testdata", src)).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s: %v\n%s", cc, err, out)
	}
	h, err := purego.Dlopen(so, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return nil, err
	}
	return &library{name: soname + " (fake)", soname: soname, path: so, handle: h}, nil
}

// fakeNCCL builds and binds testdata/fakenccl.c once per test binary.
var fakeNCCL = sync.OnceValues(func() (*ncclAPI, error) {
	l, err := fakeLibrary("fakenccl.c", "libnccl.so.2")
	if err != nil {
		return nil, err
	}
	return bindNCCL(l)
})

func fake(t *testing.T) *ncclAPI {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("the NCCL bindings are for linux/amd64")
	}
	api, err := fakeNCCL()
	if err != nil {
		t.Fatal(err)
	}
	return api
}

// hostOnly runs calls on a locked thread (the fake's groups are per
// thread, as NCCL's are); its work is done when the call returns.
type hostOnly struct{}

func (hostOnly) do(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return f()
}

func (hostOnly) mark() (func() (bool, error), func(), error) {
	return func() (bool, error) { return true, nil }, func() {}, nil
}

// hostBuf is memory outside the Go heap standing in for a device buffer.
type hostBuf []byte

func newHostBuf(t *testing.T, bytes int) hostBuf {
	t.Helper()
	b, err := syscall.Mmap(-1, 0, max(bytes, 1), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(b) })
	return b[:bytes]
}

func (b hostBuf) ptr() DevPtr { return DevPtr(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
func (b hostBuf) f32() []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}
func (b hostBuf) i32() []int32 {
	return unsafe.Slice((*int32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

// ranks runs f for every rank of a new communicator of size n.
func ranks(t *testing.T, api *ncclAPI, n int, f func(nc *NCCL) error) {
	t.Helper()
	id, err := api.uniqueID()
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			nc, err := openNCCL(api, hostOnly{}, id, n, r, nil)
			if err != nil {
				errs[r] = err
				return
			}
			errs[r] = errors.Join(f(nc), nc.Close())
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func TestNCCLCollectivesOnFake(t *testing.T) {
	api := fake(t)
	v, err := api.version()
	if err != nil || ncclVersionString(v) != "2.18.5" {
		t.Fatalf("version %d (%s), %v", v, ncclVersionString(v), err)
	}
	const n, m = 3, 10
	// sendCount[i][j]: what rank i sends rank j (zeros included)
	sendCount := [n][n]int{{2, 0, 3}, {1, 4, 0}, {0, 2, 5}}
	var mu sync.Mutex
	report := func(r int, what string, got, want any) error {
		mu.Lock()
		defer mu.Unlock()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("%s: got %v, want %v", what, got, want)
		}
		return nil
	}
	ranks(t, api, n, func(nc *NCCL) error {
		r := nc.Rank()
		var errs []error
		// all-reduce in place: element i of rank r is r*100+i
		b := newHostBuf(t, 4*m)
		want := make([]float32, m)
		for i := range m {
			b.f32()[i] = float32(r*100 + i)
			want[i] = float32(0+100+200) + 3*float32(i)
		}
		errs = append(errs, nc.AllReduce(b.ptr(), b.ptr(), m, F32, NCCLSum), nc.Wait(context.Background()))
		errs = append(errs, report(r, "all-reduce sum", b.f32(), want))
		// max over int32 into another buffer
		s, d := newHostBuf(t, 8), newHostBuf(t, 8)
		s.i32()[0], s.i32()[1] = int32(r), int32(-r)
		errs = append(errs, nc.AllReduce(s.ptr(), d.ptr(), 2, I32, NCCLMax))
		errs = append(errs, report(r, "all-reduce max", d.i32(), []int32{n - 1, 0}))
		// reduce-scatter: block k of every rank is k+r; rank r gets sum over ranks of (r + rank)
		rs, rr := newHostBuf(t, 4*n*2), newHostBuf(t, 4*2)
		for k := range n {
			rs.f32()[2*k], rs.f32()[2*k+1] = float32(k+r), float32(10*(k+r))
		}
		errs = append(errs, nc.ReduceScatter(rs.ptr(), rr.ptr(), 2, F32, NCCLSum))
		errs = append(errs, report(r, "reduce-scatter", rr.f32(), []float32{float32(3*r + 3), float32(30*r + 30)}))
		// all-gather in place: rank r's block is already at r
		g := newHostBuf(t, 4*n)
		g.f32()[r] = float32(7 * (r + 1))
		errs = append(errs, nc.AllGather(g.ptr().Add(int64(4*r)), g.ptr(), 1, F32))
		errs = append(errs, report(r, "all-gather", g.f32(), []float32{7, 14, 21}))
		// broadcast from rank 2
		bc := newHostBuf(t, 4)
		bc.f32()[0] = float32(r + 40)
		errs = append(errs, nc.Broadcast(bc.ptr(), bc.ptr(), 1, F32, 2))
		errs = append(errs, report(r, "broadcast", bc.f32(), []float32{42}))
		// all-to-all-v: rank r sends rank j sendCount[r][j] values r*1000+j*10+k
		var sc, rc []int
		var out []float32
		for j := range n {
			sc = append(sc, sendCount[r][j])
			rc = append(rc, sendCount[j][r])
		}
		sb, rb := newHostBuf(t, 4*10), newHostBuf(t, 4*10)
		o := 0
		for j := range n {
			for k := range sendCount[r][j] {
				sb.f32()[o] = float32(r*1000 + j*10 + k)
				o++
			}
			for k := range sendCount[j][r] {
				out = append(out, float32(j*1000+r*10+k))
			}
		}
		errs = append(errs, nc.AllToAllV(sb.ptr(), sc, rb.ptr(), rc, F32))
		errs = append(errs, report(r, "all-to-all-v", rb.f32()[:len(out)], out))
		return errors.Join(errs...)
	})
}

func TestNCCLErrorsOnFake(t *testing.T) {
	api := fake(t)
	id, err := api.uniqueID()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openNCCL(api, hostOnly{}, id, 2, 2, nil); err == nil || !errors.Is(err, ErrCollective) {
		t.Errorf("rank 2 of 2: %v", err)
	}
	bad := id
	bad[77] ^= 1
	_, err = openNCCL(api, hostOnly{}, bad, 1, 0, nil)
	if err == nil || !errors.Is(err, ErrCollective) || !strings.Contains(err.Error(), "ncclCommInitRank (rank 0 of 1): ncclInvalidArgument: fake: invalid argument") {
		t.Errorf("corrupted id: %v", err)
	}
	ranks(t, api, 1, func(nc *NCCL) error {
		b := newHostBuf(t, 16)
		var errs []error
		expect := func(what string, err error, want string) {
			if err == nil || !errors.Is(err, ErrCollective) || !strings.Contains(err.Error(), want) {
				errs = append(errs, fmt.Errorf("%s: %v, want %q", what, err, want))
			}
		}
		expect("bf16 on the fake", nc.AllReduce(b.ptr(), b.ptr(), 2, BF16, NCCLSum), "ncclAllReduce (2 bf16, sum): ncclInvalidArgument: fake: invalid argument (fake: only ncclInt32 and ncclFloat32)")
		expect("unknown type", nc.AllGather(b.ptr(), b.ptr(), 1, DType(42)), "NCCL has no type for DType(42)")
		expect("negative count", nc.AllReduce(b.ptr(), b.ptr(), -1, F32, NCCLSum), "negative count -1")
		expect("counts", nc.AllToAllV(b.ptr(), []int{1, 1}, b.ptr(), []int{1}, F32), "all-to-all-v over 1 ranks with 2 send and 1 receive counts")
		expect("root", nc.Broadcast(b.ptr(), b.ptr(), 1, F32, 1), "broadcast root 1 of 1 ranks")
		// a receive without its send fails at the group's end, and the
		// thread is not left inside the group: the next call works
		expect("unmatched receive", nc.AllToAllV(b.ptr(), []int{0}, b.ptr(), []int{1}, F32), "ncclGroupEnd (all-to-all-v over 1 ranks): ncclInvalidUsage: fake: invalid usage (fake: a receive from a peer that sent nothing)")
		if err := nc.AllReduce(b.ptr(), b.ptr(), 4, F32, NCCLSum); err != nil {
			errs = append(errs, fmt.Errorf("after a failed group: %w", err))
		}
		return errors.Join(errs...)
	})
}

// TestNCCLWaitAbortsOnFake: a communicator whose work never finishes is aborted
// when the caller gives up, and says so.
func TestNCCLWaitAbortsOnFake(t *testing.T) {
	api := fake(t)
	id, err := api.uniqueID()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := openNCCL(api, neverDone{}, id, 1, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = nc.Wait(ctx)
	if !errors.Is(err, ErrCollective) || !strings.Contains(err.Error(), "rank 0 of 1 gave up waiting: context deadline exceeded") {
		t.Errorf("Wait: %v", err)
	}
	if err := nc.AllReduce(0, 0, 0, F32, NCCLSum); err == nil || !strings.Contains(err.Error(), "communicator closed") {
		t.Errorf("after abort: %v", err)
	}
	if err := nc.Close(); err != nil {
		t.Errorf("Close after Abort: %v", err)
	}
}

type neverDone struct{ hostOnly }

func (neverDone) mark() (func() (bool, error), func(), error) {
	return func() (bool, error) { return false, nil }, func() {}, nil
}

func TestNCCLVersionString(t *testing.T) {
	for v, want := range map[int]string{2708: "2.7.8", 21805: "2.18.5", 22803: "2.28.3"} {
		if got := ncclVersionString(v); got != want {
			t.Errorf("%d: %s, want %s", v, got, want)
		}
	}
}

// TestNVMLOnFake: the NVML bindings read utilisation and memory by UUID
// (the struct layouts and the by-UUID handle), and say which GPU they
// could not find.
func TestNVMLOnFake(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the bindings are for linux/amd64")
	}
	l, err := fakeLibrary("fakenvml.c", "libnvidia-ml.so.1")
	if err != nil {
		t.Fatal(err)
	}
	api, err := bindNVML(l)
	if err != nil {
		t.Fatal(err)
	}
	n, err := openNVML(api)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []GPUSample{
		{UUID: "GPU-00000000-0000-0000-0000-000000000002", UtilPct: 75, MemUsedBytes: 2 << 30, MemTotalBytes: 80 << 30},
		{UUID: "GPU-00000000-0000-0000-0000-000000000001", UtilPct: 40, MemUsedBytes: 1 << 30, MemTotalBytes: 80 << 30},
		{UUID: "GPU-00000000-0000-0000-0000-000000000002", UtilPct: 75, MemUsedBytes: 2 << 30, MemTotalBytes: 80 << 30}, // a cached handle
	} {
		got, err := n.Sample(want.UUID)
		if err != nil || got != want {
			t.Errorf("sample %d: %+v, %v; want %+v", i, got, err, want)
		}
	}
	_, err = n.Sample("GPU-ffffffff-0000-0000-0000-000000000000")
	if err == nil || !errors.Is(err, ErrLibrary) || !strings.Contains(err.Error(), "nvmlDeviceGetHandleByUUID (GPU-ffffffff-0000-0000-0000-000000000000): NVML_ERROR_NOT_FOUND: Not Found") {
		t.Errorf("unknown GPU: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Sample("GPU-00000000-0000-0000-0000-000000000001"); err == nil {
		t.Error("Sample after Close")
	}
}

// TestNCCLWatchdogOnFake: a blocking call that a peer never lets return (an
// init, a collective) is reported by the watchdog, naming it, while the
// call goes on; calls that return in time are not.
func TestNCCLWatchdogOnFake(t *testing.T) {
	api := fake(t)
	sym, err := purego.Dlsym(api.lib.handle, "fakenccl_set_wait")
	if err != nil {
		t.Fatal(err)
	}
	ccall(sym, 1) // the fake's ranks give up on their peers after 1 s
	t.Cleanup(func() { ccall(sym, 20) })
	var mu sync.Mutex
	var stuck []string
	defer SetNCCLWatchdog(NCCLWatchdog{Limit: 200 * time.Millisecond, Stuck: func(call string, waited time.Duration) {
		mu.Lock()
		stuck = append(stuck, fmt.Sprintf("%s after %v", call, waited))
		mu.Unlock()
	}})()
	reported := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(stuck)
	}

	// rank 1 of 2 never joins
	id, err := api.uniqueID()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openNCCL(api, hostOnly{}, id, 2, 0, nil); err == nil {
		t.Fatal("an init without its peer succeeded")
	}
	if got := reported(); !slices.Equal(got, []string{"ncclCommInitRank (rank 0 of 2) after 200ms"}) {
		t.Fatalf("stuck calls %q, want the init", got)
	}

	// both join, only rank 0 enters the all-reduce
	buf := newHostBuf(t, 4)
	ranks(t, api, 2, func(nc *NCCL) error {
		if nc.Rank() == 1 {
			return nil
		}
		if err := nc.AllReduce(buf.ptr(), buf.ptr(), 1, F32, NCCLSum); err == nil {
			return errors.New("an all-reduce without its peer succeeded")
		}
		return nil
	})
	if got := reported(); len(got) != 2 || got[1] != "ncclAllReduce (rank 0 of 2) after 200ms" {
		t.Fatalf("stuck calls %q, want the all-reduce second", got)
	}

	// calls that return in time are not reported
	ranks(t, api, 2, func(nc *NCCL) error { return nc.AllReduce(buf.ptr(), buf.ptr(), 0, F32, NCCLSum) })
	if got := reported(); len(got) != 2 {
		t.Fatalf("stuck calls %q after calls that returned", got)
	}
}

// TestNCCLLimitFor: the watchdog's limit follows the ranks' comm timeout
// (four times it), within [2 min, DefaultNCCLLimit]; SetNCCLLimit keeps
// what the watchdog does and puts the previous one back.
func TestNCCLLimitFor(t *testing.T) {
	for _, tc := range []struct{ comm, want time.Duration }{
		{5 * time.Second, 2 * time.Minute}, {30 * time.Second, 2 * time.Minute}, {60 * time.Second, 4 * time.Minute},
		{2 * time.Minute, 8 * time.Minute}, {time.Hour, DefaultNCCLLimit},
	} {
		if got := NCCLLimitFor(tc.comm); got != tc.want {
			t.Errorf("comm timeout %v: limit %v, want %v", tc.comm, got, tc.want)
		}
	}
	before := ncclDog.Load()
	restore := SetNCCLLimit(3 * time.Minute)
	if w := ncclDog.Load(); w.Limit != 3*time.Minute || w.Stuck == nil {
		t.Errorf("after SetNCCLLimit: %+v", w)
	}
	restore()
	if ncclDog.Load() != before {
		t.Error("restore did not put the previous watchdog back")
	}
}
