package devcomm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

// ---- a host-memory device and a NCCL stand-in, for tests without a GPU ----

// hostDev is a cuda.Device whose memory is host memory (mmap, outside the
// Go heap); only memory and copies work. gpu is its UUID ("": not a GPU).
type hostDev struct {
	gpu      string
	mu       sync.Mutex
	maps     map[cuda.DevPtr][]byte
	allocErr error // every Alloc fails with it
}

type gpuDev struct{ *hostDev }

func (d gpuDev) UUID() string { return d.gpu }

func newDev(t *testing.T, uuid string) cuda.Device {
	d := &hostDev{gpu: uuid, maps: map[cuda.DevPtr][]byte{}}
	t.Cleanup(func() { _ = d.Close() })
	if uuid == "" {
		return d
	}
	return gpuDev{d}
}

func mem(p cuda.DevPtr, bytes int64) []byte {
	u := uintptr(p)
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&u))), bytes)
}

func f32s(p cuda.DevPtr, n int) []float32 {
	u := uintptr(p)
	return unsafe.Slice((*float32)(*(*unsafe.Pointer)(unsafe.Pointer(&u))), n)
}

var errNoKernels = errors.New("hostDev: memory only")

func (d *hostDev) Name() string                       { return "host memory" }
func (d *hostDev) MemInfo() (int64, int64, error)     { return 1 << 30, 1 << 30, nil }
func (d *hostDev) Kernel(string) (cuda.Kernel, error) { return nil, errNoKernels }
func (d *hostDev) Launch(cuda.Kernel, cuda.Dim3, cuda.Dim3, int, ...uint64) error {
	return errNoKernels
}
func (d *hostDev) Gemm(*cuda.Gemm) error                                 { return errNoKernels }
func (d *hostDev) GemmGrouped([]cuda.Gemm) error                         { return errNoKernels }
func (d *hostDev) Sync() error                                           { return nil }
func (d *hostDev) NewEvent() (cuda.Event, error)                         { return nil, errNoKernels }
func (d *hostDev) Record(cuda.Event) error                               { return errNoKernels }
func (d *hostDev) Elapsed(cuda.Event, cuda.Event) (time.Duration, error) { return 0, errNoKernels }

func (d *hostDev) Alloc(bytes int64) (cuda.DevPtr, error) {
	if d.allocErr != nil {
		return 0, d.allocErr
	}
	b, err := syscall.Mmap(-1, 0, int(max(bytes, 1)), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return 0, err
	}
	p := cuda.DevPtr(uintptr(unsafe.Pointer(&b[0])))
	d.mu.Lock()
	d.maps[p] = b
	d.mu.Unlock()
	return p, nil
}

func (d *hostDev) Free(p cuda.DevPtr) error {
	d.mu.Lock()
	b, ok := d.maps[p]
	delete(d.maps, p)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("Free(%#x): not allocated", p)
	}
	return syscall.Munmap(b)
}

func (d *hostDev) Memset(p cuda.DevPtr, bytes int64) error { clear(mem(p, bytes)); return nil }
func (d *hostDev) CopyHtoD(dst cuda.DevPtr, src unsafe.Pointer, bytes int64) error {
	copy(mem(dst, bytes), unsafe.Slice((*byte)(src), bytes))
	return nil
}
func (d *hostDev) CopyDtoH(dst unsafe.Pointer, src cuda.DevPtr, bytes int64) error {
	copy(unsafe.Slice((*byte)(dst), bytes), mem(src, bytes))
	return nil
}
func (d *hostDev) CopyDtoD(dst, src cuda.DevPtr, bytes int64) error {
	copy(mem(dst, bytes), mem(src, bytes))
	return nil
}

func (d *hostDev) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for p, b := range d.maps {
		_ = syscall.Munmap(b)
		delete(d.maps, p)
	}
	return nil
}

// fakeLib stands in for NCCL: ranks are goroutines; the last rank to
// arrive at a collective does it for all (every buffer is host memory).
type fakeLib struct {
	mu      sync.Mutex
	idErr   error         // newID fails
	openErr map[int]error // open fails on these ranks
	ids     int           // newID calls
	joined  map[cuda.NCCLID][]int
	worlds  map[cuda.NCCLID]*fakeWorld
	aborted int // communicators aborted
	// misroute makes the all-to-all-v deliver rank 0's floats for rank 1
	// to rank 1 from every rank (a broken exchange)
	misroute bool
	// misgather makes the all-gather give every rank rank 0's block in
	// place of the last rank's
	misgather bool
}

func (l *fakeLib) version() (string, error) { return "2.99.0", nil }

func (l *fakeLib) newID() (cuda.NCCLID, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids++
	var id cuda.NCCLID
	if l.idErr != nil {
		return id, l.idErr
	}
	for i := range id {
		id[i] = byte(rand.Uint32())
	}
	return id, nil
}

func (l *fakeLib) open(dev cuda.Device, id cuda.NCCLID, size, rank int) (ncclOps, error) {
	l.mu.Lock()
	if l.joined == nil {
		l.joined, l.worlds = map[cuda.NCCLID][]int{}, map[cuda.NCCLID]*fakeWorld{}
	}
	w := l.worlds[id]
	if w == nil {
		w = &fakeWorld{n: size, ops: make([]fakeOp, size), misroute: l.misroute, misgather: l.misgather}
		w.cv = sync.NewCond(&w.mu)
		l.worlds[id] = w
	}
	if err := l.openErr[rank]; err != nil {
		l.mu.Unlock()
		return nil, err
	}
	l.joined[id] = append(l.joined[id], rank)
	l.mu.Unlock()
	return &fakeComm{w: w, rank: rank, lib: l}, nil
}

// versionLib is fakeLib with a rank's own answer to version().
type versionLib struct {
	*fakeLib
	v   string
	err error
}

func (l versionLib) version() (string, error) { return l.v, l.err }

type fakeOp struct {
	kind       string
	send, recv cuda.DevPtr
	n          int
	sc, rc     []int
}

type fakeWorld struct {
	n         int
	misroute  bool
	misgather bool
	ran       []string // the collectives run, in order
	mu        sync.Mutex
	cv        *sync.Cond
	in        int
	gen       int
	ops       []fakeOp
}

type fakeComm struct {
	w    *fakeWorld
	rank int
	lib  *fakeLib
	// hang makes Wait block until its context ends (a peer that died
	// without NCCL noticing)
	hang bool
}

func (c *fakeComm) do(op fakeOp) error {
	w := c.w
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops[c.rank] = op
	w.in++
	if w.in < w.n {
		gen := w.gen
		for gen == w.gen {
			w.cv.Wait()
		}
		return nil
	}
	w.run()
	w.in = 0
	w.gen++
	w.cv.Broadcast()
	return nil
}

func (w *fakeWorld) run() {
	op := w.ops[0].kind
	w.ran = append(w.ran, op)
	switch op {
	case "allreduce":
		n := w.ops[0].n
		sum := make([]float32, n)
		for _, o := range w.ops {
			for i, v := range f32s(o.send, n) {
				sum[i] += v
			}
		}
		for _, o := range w.ops {
			copy(f32s(o.recv, n), sum)
		}
	case "reducescatter":
		n := w.ops[0].n
		for r, o := range w.ops {
			sum := make([]float32, n)
			for _, p := range w.ops {
				for i, v := range f32s(p.send.Add(int64(4*n*r)), n) {
					sum[i] += v
				}
			}
			copy(f32s(o.recv, n), sum)
		}
	case "allgather":
		n := w.ops[0].n
		all := make([]float32, 0, n*w.n)
		for r, o := range w.ops {
			if w.misgather && r == w.n-1 {
				o = w.ops[0]
			}
			all = append(all, f32s(o.send, n)...)
		}
		for _, o := range w.ops {
			copy(f32s(o.recv, n*w.n), all)
		}
	case "alltoallv":
		parts := make([][][]float32, w.n) // [from][to]
		for f, o := range w.ops {
			off := 0
			for _, k := range o.sc {
				parts[f] = append(parts[f], append([]float32(nil), f32s(o.send.Add(int64(4*off)), k)...))
				off += k
			}
		}
		for to, o := range w.ops {
			off := 0
			for f, k := range o.rc {
				if w.misroute && to == 1 {
					f = 0
				}
				copy(f32s(o.recv.Add(int64(4*off)), k), parts[f][to])
				off += k
			}
		}
	}
}

func (c *fakeComm) AllReduce(send, recv cuda.DevPtr, n int, dt cuda.DType, op cuda.NCCLOp) error {
	return c.do(fakeOp{kind: "allreduce", send: send, recv: recv, n: n})
}
func (c *fakeComm) ReduceScatter(send, recv cuda.DevPtr, n int, dt cuda.DType, op cuda.NCCLOp) error {
	return c.do(fakeOp{kind: "reducescatter", send: send, recv: recv, n: n})
}
func (c *fakeComm) AllGather(send, recv cuda.DevPtr, n int, dt cuda.DType) error {
	return c.do(fakeOp{kind: "allgather", send: send, recv: recv, n: n})
}
func (c *fakeComm) AllToAllV(send cuda.DevPtr, sc []int, recv cuda.DevPtr, rc []int, dt cuda.DType) error {
	return c.do(fakeOp{kind: "alltoallv", send: send, recv: recv, sc: sc, rc: rc})
}
func (c *fakeComm) Wait(ctx context.Context) error {
	if c.hang {
		<-ctx.Done()
		return context.Cause(ctx)
	}
	return nil
}
func (c *fakeComm) Close() error { return nil }
func (c *fakeComm) Abort() error {
	c.lib.mu.Lock()
	c.lib.aborted++
	c.lib.mu.Unlock()
	return nil
}

// ---- helpers ----

// group runs f on every rank of a loopback gRPC group of size n.
func group(t *testing.T, n int, f func(r int, g *parallel.Comm) error) {
	t.Helper()
	ts, err := parallel.NewLoopbackGRPC(context.Background(), n, parallel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer parallel.CloseTransports(ts)
	ranks := make([]int, n)
	for i := range ranks {
		ranks[i] = i
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			g, err := parallel.NewComm(ts[r], ranks, parallel.CommOptions{})
			if err != nil {
				errs[r] = err
				return
			}
			errs[r] = f(r, g)
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func upload(dev cuda.Device, v []float32) (cuda.DevPtr, error) {
	p, err := dev.Alloc(int64(4 * max(len(v), 1)))
	if err != nil || len(v) == 0 {
		return p, err
	}
	return p, dev.CopyHtoD(p, unsafe.Pointer(&v[0]), int64(4*len(v)))
}

func download(dev cuda.Device, p cuda.DevPtr, n int) ([]float32, error) {
	v := make([]float32, n)
	if n == 0 {
		return v, nil
	}
	return v, dev.CopyDtoH(unsafe.Pointer(&v[0]), p, int64(4*n))
}

// ---- the tests ----

// TestBootstrapOverGRPC: rank 0 alone makes the id; every rank joins
// with rank 0's id, received over the gRPC transport; the choice is NCCL.
func TestBootstrapOverGRPC(t *testing.T) {
	lib := &fakeLib{}
	const n = 3
	group(t, n, func(r int, g *parallel.Comm) error {
		c, err := open(context.Background(), newDev(t, fmt.Sprintf("GPU-%d", r)), g, Auto, both, lib)
		if err != nil {
			return err
		}
		defer c.Close()
		if c.Backend() != NCCL || c.Describe() != "NCCL 2.99.0 over 3 GPUs" || c.Rank() != r || c.Size() != n {
			return fmt.Errorf("backend %s (%s), rank %d of %d", c.Backend(), c.Describe(), c.Rank(), c.Size())
		}
		return nil
	})
	if lib.ids != 1 || len(lib.joined) != 1 {
		t.Fatalf("%d ids made, %d communicators joined", lib.ids, len(lib.joined))
	}
	for _, rs := range lib.joined {
		if len(rs) != n {
			t.Errorf("ranks joined: %v", rs)
		}
	}
}

// TestBootstrapIDFailure: when rank 0 cannot make the id, every rank
// fails with rank 0's reason, and none waits or joins.
func TestBootstrapIDFailure(t *testing.T) {
	lib := &fakeLib{idErr: errors.New("cuda: ncclGetUniqueId: ncclSystemError: no interface to bind")}
	group(t, 3, func(r int, g *parallel.Comm) error {
		_, err := open(context.Background(), newDev(t, fmt.Sprintf("GPU-%d", r)), g, Auto, both, lib)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "rank 0 could not make the NCCL id: cuda: ncclGetUniqueId: ncclSystemError: no interface to bind") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	if len(lib.joined) != 0 {
		t.Errorf("joined: %v", lib.joined)
	}
}

// TestChoice: Auto falls back to host-staged collectives, saying why,
// where NCCL cannot run; asking for NCCL there is an error with the same
// reason; asking for host gets host.
func TestChoice(t *testing.T) {
	cases := []struct {
		name string
		gpus []string
		vers []string // NCCL version per rank ("" : missing)
		want string
	}{
		{"shared GPU", []string{"GPU-a", "GPU-b", "GPU-a"}, nil, "ranks 0 and 2 share GPU GPU-a (NCCL needs one GPU per rank)"},
		{"emulator", []string{"GPU-a", ""}, nil, "rank 1's device (host memory) is not a GPU"},
		{"no NCCL", []string{"GPU-a", "GPU-b"}, []string{"2.99.0", ""}, "rank 1 has no NCCL: cuda: NCCL (libnccl.so.2) not found"},
		{"versions", []string{"GPU-a", "GPU-b"}, []string{"2.99.0", "2.18.5"}, "rank 0 has NCCL 2.99.0, rank 1 NCCL 2.18.5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := &fakeLib{}
			lib := func(r int) library {
				if tc.vers == nil {
					return base
				}
				if tc.vers[r] == "" {
					return versionLib{base, "", errors.New("cuda: NCCL (libnccl.so.2) not found")}
				}
				return versionLib{base, tc.vers[r], nil}
			}
			for _, want := range []Backend{Auto, NCCL, Host} {
				group(t, len(tc.gpus), func(r int, g *parallel.Comm) error {
					c, err := open(context.Background(), newDev(t, tc.gpus[r]), g, want, both, lib(r))
					switch want {
					case Auto:
						if err != nil || c.Backend() != Host || c.Describe() != "host-staged collectives: "+tc.want {
							return fmt.Errorf("auto: %v, %v", c, err)
						}
					case NCCL:
						if !errors.Is(err, ErrUnavailable) || err.Error() != "devcomm: backend unavailable: NCCL: "+tc.want {
							return fmt.Errorf("nccl: %v", err)
						}
					case Host:
						if err != nil || c.Backend() != Host {
							return fmt.Errorf("host: %v, %v", c, err)
						}
					}
					return nil
				})
			}
			if base.ids != 0 {
				t.Errorf("%d NCCL ids made", base.ids)
			}
		})
	}
	if _, err := ParseBackend("gloo"); err == nil || !strings.Contains(err.Error(), `unknown collectives backend "gloo" (want auto, nccl or host)`) {
		t.Errorf("ParseBackend: %v", err)
	}
}

// collectiveChecks runs every collective on c with inputs derived from
// the rank and checks the results against what they must be.
func collectiveChecks(ctx context.Context, dev cuda.Device, c Comm, m int) error {
	r, n := c.Rank(), c.Size()
	val := func(rank, i int) float32 { return float32((rank+1)*(i%97)) + float32(rank)/8 }
	// all-reduce
	x := make([]float32, m)
	for i := range x {
		x[i] = val(r, i)
	}
	p, err := upload(dev, x)
	if err != nil {
		return err
	}
	defer dev.Free(p)
	if err := c.AllReduceSum(ctx, p, m); err != nil {
		return fmt.Errorf("all-reduce: %w", err)
	}
	got, err := download(dev, p, m)
	if err != nil {
		return err
	}
	for i := range got {
		var want float32
		for q := range n {
			want += val(q, i)
		}
		if got[i] != want {
			return fmt.Errorf("all-reduce (%s): element %d is %v, want %v", c.Backend(), i, got[i], want)
		}
	}
	// reduce-scatter over n blocks of k, then all-gather them back
	k := m/n + 1
	y := make([]float32, n*k)
	for i := range y {
		y[i] = val(r, i)
	}
	q, err := upload(dev, y)
	if err != nil {
		return err
	}
	defer dev.Free(q)
	if err := c.ReduceScatterSum(ctx, q, k); err != nil {
		return fmt.Errorf("reduce-scatter: %w", err)
	}
	if err := c.AllGather(ctx, q, k); err != nil {
		return fmt.Errorf("all-gather: %w", err)
	}
	got, err = download(dev, q, n*k)
	if err != nil {
		return err
	}
	for i := range got {
		var want float32
		for s := range n {
			want += val(s, i)
		}
		if got[i] != want {
			return fmt.Errorf("reduce-scatter + all-gather (%s): element %d is %v, want %v", c.Backend(), i, got[i], want)
		}
	}
	// all-to-all-v: rank a sends rank b (a+2b)%4 floats (zeros included)
	cnt := func(a, b int) int { return (a + 2*b) % 4 }
	var send, want []float32
	var sc, rc []int
	for b := range n {
		sc, rc = append(sc, cnt(r, b)), append(rc, cnt(b, r))
		for i := range cnt(r, b) {
			send = append(send, float32(1000*r+10*b+i))
		}
		for i := range cnt(b, r) {
			want = append(want, float32(1000*b+10*r+i))
		}
	}
	sp, err := upload(dev, send)
	if err != nil {
		return err
	}
	defer dev.Free(sp)
	rp, err := dev.Alloc(int64(4 * max(len(want), 1)))
	if err != nil {
		return err
	}
	defer dev.Free(rp)
	if err := c.AllToAllV(ctx, sp, sc, rp, rc); err != nil {
		return fmt.Errorf("all-to-all-v: %w", err)
	}
	got, err = download(dev, rp, len(want))
	if err != nil {
		return err
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("all-to-all-v (%s): got %v, want %v", c.Backend(), got, want)
	}
	return nil
}

// TestCollectives: both backends (NCCL through the stand-in) compute
// every collective right, over 1, 2 and 3 ranks.
func TestCollectives(t *testing.T) {
	for _, n := range []int{1, 2, 3} {
		for _, want := range []Backend{Host, NCCL} {
			t.Run(fmt.Sprintf("%s/%d", want, n), func(t *testing.T) {
				lib := &fakeLib{}
				group(t, n, func(r int, g *parallel.Comm) error {
					dev := newDev(t, fmt.Sprintf("GPU-%d", r))
					c, err := open(context.Background(), dev, g, want, both, lib)
					if err != nil {
						return err
					}
					defer c.Close()
					if c.Backend() != want {
						return fmt.Errorf("backend %s", c.Backend())
					}
					return collectiveChecks(context.Background(), dev, c, 1000)
				})
			})
		}
	}
}

// TestBootstrapJoinFailure: a rank that cannot join the communicator
// makes every rank fail with its reason, and those that joined abort
// theirs (rather than hang in the first collective).
func TestBootstrapJoinFailure(t *testing.T) {
	lib := &fakeLib{openErr: map[int]error{2: errors.New("cuda: ncclCommInitRank (rank 2 of 3): ncclUnhandledCudaError")}}
	group(t, 3, func(r int, g *parallel.Comm) error {
		_, err := open(context.Background(), newDev(t, fmt.Sprintf("GPU-%d", r)), g, NCCL, both, lib)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "rank 2 could not join the NCCL communicator: cuda: ncclCommInitRank (rank 2 of 3): ncclUnhandledCudaError") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	if lib.aborted != 2 {
		t.Errorf("%d communicators aborted, want the 2 that were made", lib.aborted)
	}
}

// TestHandshake: Open's first exchange checks what arrives: NCCL that
// delivers the wrong floats fails Open on every rank, naming the rank
// that saw it, and every communicator is aborted.
func TestHandshake(t *testing.T) {
	lib := &fakeLib{misroute: true}
	group(t, 3, func(r int, g *parallel.Comm) error {
		_, err := open(context.Background(), newDev(t, fmt.Sprintf("GPU-%d", r)), g, NCCL, both, lib)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "rank 1 failed the NCCL communicator's first exchange: the all-to-all-v delivered 1 from rank 1, want 4") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	if lib.aborted != 3 {
		t.Errorf("%d communicators aborted, want 3", lib.aborted)
	}
}

// TestHandshakeUses: the first exchange runs only the collectives the
// group uses (a broken all-to-all goes unseen by a group that only
// all-reduces), and a rank that cannot set it up makes every rank fail at
// once, before any enters NCCL (whose waits for a peer cannot be cut
// short), naming it.
func TestHandshakeUses(t *testing.T) {
	lib := &fakeLib{misroute: true}
	group(t, 3, func(r int, g *parallel.Comm) error {
		c, err := open(context.Background(), newDev(t, fmt.Sprintf("GPU-%d", r)), g, NCCL, UsesAllReduce, lib)
		if err != nil {
			return err
		}
		return c.Close()
	})
	var ops []string
	for _, w := range lib.worlds {
		ops = append(ops, w.ran...)
	}
	if !slices.Equal(ops, []string{"allreduce"}) {
		t.Errorf("the all-reduce group's first exchange ran %v", ops)
	}

	// a tensor-parallel group sums and gathers: a broken all-gather fails
	// its Open, and the all-to-all it does not use is not run
	lib = &fakeLib{misroute: true, misgather: true}
	group(t, 3, func(r int, g *parallel.Comm) error {
		_, err := open(context.Background(), newDev(t, fmt.Sprintf("GPU-%d", r)), g, NCCL, UsesAllReduce|UsesAllGather, lib)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "the all-gather gave 10 as rank 2's block, want 30") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	ops = nil
	for _, w := range lib.worlds {
		ops = append(ops, w.ran...)
	}
	if !slices.Equal(ops, []string{"allreduce", "allgather"}) {
		t.Errorf("the tensor-parallel group's first exchange ran %v", ops)
	}

	lib = &fakeLib{}
	start := time.Now()
	group(t, 3, func(r int, g *parallel.Comm) error {
		dev := newDev(t, fmt.Sprintf("GPU-%d", r))
		if r == 2 {
			dev.(gpuDev).allocErr = errors.New("cuda: out of device memory")
		}
		_, err := open(context.Background(), dev, g, NCCL, both, lib)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "rank 2 could not set up the NCCL communicator's first exchange: cuda: out of device memory") {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	for _, w := range lib.worlds {
		if len(w.ran) != 0 {
			t.Errorf("collectives ran after a rank could not set up: %v", w.ran)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the ranks took %v to fail", d)
	}
	if lib.aborted != 3 {
		t.Errorf("%d communicators aborted, want 3", lib.aborted)
	}
}

// TestNCCLCollectiveTimeout: a collective that never finishes is given up
// after the timeout, saying so, and its communicator aborted; one that
// could not be enqueued aborts it too.
func TestNCCLCollectiveTimeout(t *testing.T) {
	lib := &fakeLib{}
	fc := &fakeComm{w: &fakeWorld{n: 1, ops: make([]fakeOp, 1)}, lib: lib, hang: true}
	fc.w.cv = sync.NewCond(&fc.w.mu)
	c := &ncclComm{nc: fc, timeout: 50 * time.Millisecond}
	err := c.done(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "no NCCL collective may take 50ms: a peer is taken to have failed") {
		t.Errorf("timeout: %v", err)
	}
	if err := c.done(context.Background(), errors.New("ncclSend: ncclInvalidUsage")); err == nil || lib.aborted != 1 {
		t.Errorf("enqueue failure: %v, %d aborted", err, lib.aborted)
	}
	// a trainer that failed aborts rather than destroys
	if err := c.Abort(); err != nil || lib.aborted != 2 {
		t.Errorf("Abort: %v, %d aborted", err, lib.aborted)
	}
}

// both: a group that runs every kind of collective.
const both = UsesAllReduce | UsesAllToAll | UsesAllGather
