package cuda

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Bindings of NCCL (libnccl.so.2). Signatures and values are from
// nccl.h of NCCL 2.18-2.28; every function bound here exists since 2.12
// except ncclGetLastError (2.13, optional).
//
// Calling convention: every collective is enqueued on the legacy NULL
// stream of the current CUDA context (the Context's, made current on the
// calling OS thread), so it is ordered with the engine's kernels and
// copies and returns before the device has done the work. Wait (or the
// Context's Sync) waits for it.

// NCCLIDBytes is NCCL_UNIQUE_ID_BYTES.
const NCCLIDBytes = 128

// NCCLID is an ncclUniqueId: made by one rank (NewNCCLID), sent to every
// other rank out of band (the ranks' gRPC transport), and passed by all
// to OpenNCCL.
type NCCLID [NCCLIDBytes]byte

// ncclResult_t.
const (
	ncclSuccess            = 0
	ncclUnhandledCudaError = 1
	ncclSystemError        = 2
	ncclInternalError      = 3
	ncclInvalidArgument    = 4
	ncclInvalidUsage       = 5
	ncclRemoteError        = 6
	ncclInProgress         = 7
	ncclTimeout            = 8
)

var ncclResultNames = map[int32]string{
	ncclSuccess:            "ncclSuccess",
	ncclUnhandledCudaError: "ncclUnhandledCudaError",
	ncclSystemError:        "ncclSystemError",
	ncclInternalError:      "ncclInternalError",
	ncclInvalidArgument:    "ncclInvalidArgument",
	ncclInvalidUsage:       "ncclInvalidUsage",
	ncclRemoteError:        "ncclRemoteError",
	ncclInProgress:         "ncclInProgress",
	ncclTimeout:            "ncclTimeout",
}

// ncclDataType_t values of the element types.
var ncclTypes = map[DType]uintptr{
	I32:  2, // ncclInt32
	F32:  7, // ncclFloat32
	BF16: 9, // ncclBfloat16
}

// NCCLOp is an ncclRedOp_t.
type NCCLOp int

// The reductions.
const (
	NCCLSum  NCCLOp = 0 // ncclSum
	NCCLProd NCCLOp = 1 // ncclProd
	NCCLMax  NCCLOp = 2 // ncclMax
	NCCLMin  NCCLOp = 3 // ncclMin
	NCCLAvg  NCCLOp = 4 // ncclAvg (NCCL 2.10+)
)

func (o NCCLOp) String() string {
	switch o {
	case NCCLSum:
		return "sum"
	case NCCLProd:
		return "prod"
	case NCCLMax:
		return "max"
	case NCCLMin:
		return "min"
	case NCCLAvg:
		return "avg"
	}
	return fmt.Sprintf("NCCLOp(%d)", int(o))
}

// ErrCollective: an NCCL call failed, or a collective was abandoned (a
// peer failed, the caller gave up).
var ErrCollective = errors.New("cuda: collective failed")

// ncclAPI holds NCCL's function addresses.
type ncclAPI struct {
	lib *library

	ncclGetVersion        uintptr
	ncclGetUniqueId       uintptr
	ncclCommInitRank      uintptr
	ncclCommDestroy       uintptr
	ncclCommAbort         uintptr
	ncclCommGetAsyncError uintptr
	ncclCommCount         uintptr
	ncclCommUserRank      uintptr
	ncclGetErrorString    uintptr
	ncclGetLastError      uintptr // 0 before NCCL 2.13
	ncclAllReduce         uintptr
	ncclReduceScatter     uintptr
	ncclAllGather         uintptr
	ncclBroadcast         uintptr
	ncclSend              uintptr
	ncclRecv              uintptr
	ncclGroupStart        uintptr
	ncclGroupEnd          uintptr
}

func bindNCCL(l *library) (*ncclAPI, error) {
	n := &ncclAPI{lib: l}
	err := l.bind([]symbol{
		// ncclResult_t ncclGetVersion(int *version);
		{addr: &n.ncclGetVersion, name: "ncclGetVersion"},
		// ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId);
		{addr: &n.ncclGetUniqueId, name: "ncclGetUniqueId"},
		// ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank);
		// (commId is a 128-byte struct passed BY VALUE: see initRank)
		{addr: &n.ncclCommInitRank, name: "ncclCommInitRank"},
		// ncclResult_t ncclCommDestroy(ncclComm_t comm);
		{addr: &n.ncclCommDestroy, name: "ncclCommDestroy"},
		// ncclResult_t ncclCommAbort(ncclComm_t comm);
		{addr: &n.ncclCommAbort, name: "ncclCommAbort"},
		// ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError);
		{addr: &n.ncclCommGetAsyncError, name: "ncclCommGetAsyncError"},
		// ncclResult_t ncclCommCount(const ncclComm_t comm, int* count);
		{addr: &n.ncclCommCount, name: "ncclCommCount"},
		// ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank);
		{addr: &n.ncclCommUserRank, name: "ncclCommUserRank"},
		// const char* ncclGetErrorString(ncclResult_t result);
		{addr: &n.ncclGetErrorString, name: "ncclGetErrorString"},
		// const char* ncclGetLastError(ncclComm_t comm);
		{addr: &n.ncclGetLastError, name: "ncclGetLastError", optional: true},
		// ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
		//     ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
		{addr: &n.ncclAllReduce, name: "ncclAllReduce"},
		// ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
		//     ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
		{addr: &n.ncclReduceScatter, name: "ncclReduceScatter"},
		// ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount,
		//     ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream);
		{addr: &n.ncclAllGather, name: "ncclAllGather"},
		// ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count,
		//     ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream);
		{addr: &n.ncclBroadcast, name: "ncclBroadcast"},
		// ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype,
		//     int peer, ncclComm_t comm, cudaStream_t stream);
		{addr: &n.ncclSend, name: "ncclSend"},
		// ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype,
		//     int peer, ncclComm_t comm, cudaStream_t stream);
		{addr: &n.ncclRecv, name: "ncclRecv"},
		// ncclResult_t ncclGroupStart(void);
		{addr: &n.ncclGroupStart, name: "ncclGroupStart"},
		// ncclResult_t ncclGroupEnd(void);
		{addr: &n.ncclGroupEnd, name: "ncclGroupEnd"},
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

// loadNCCL loads and binds NCCL.
func loadNCCL() (*ncclAPI, error) {
	l, err := findNCCL()
	if err != nil {
		return nil, err
	}
	libs.mu.Lock()
	defer libs.mu.Unlock()
	if libs.ncclAPI != nil {
		return libs.ncclAPI, nil
	}
	n, err := bindNCCL(l)
	if err != nil {
		return nil, err
	}
	libs.ncclAPI = n
	return n, nil
}

// check turns an ncclResult_t into an error; comm (0: none) adds NCCL's
// description of the last error on it.
func (n *ncclAPI) check(call, detail string, comm uintptr, r uintptr) error {
	code := int32(r)
	if code == ncclSuccess {
		return nil
	}
	name, ok := ncclResultNames[code]
	if !ok {
		name = fmt.Sprintf("ncclResult(%d)", code)
	}
	e := &CallError{Call: call, Detail: detail, Code: int(code), Name: name, kind: ErrCollective}
	if p := ccall(n.ncclGetErrorString, uintptr(code)); p != 0 {
		e.Text = cStringAt(p)
	}
	if comm != 0 && n.ncclGetLastError != 0 {
		if p := ccall(n.ncclGetLastError, comm); p != 0 {
			if last := cStringAt(p); last != "" && last != e.Text {
				e.Text += " (" + last + ")"
			}
		}
	}
	return e
}

// cStringAt reads the C string at address p (memory of the C side that
// outlives the call, e.g. NCCL's static error strings).
func cStringAt(p uintptr) string { return cString(*(*unsafe.Pointer)(unsafe.Pointer(&p))) }

// version is NCCL's version code (e.g. 22105 for 2.21.5).
func (n *ncclAPI) version() (int, error) {
	var v int32
	err := n.check("ncclGetVersion", "", 0, ccall(n.ncclGetVersion, uintptr(unsafe.Pointer(&v))))
	return int(v), err
}

// initRank calls ncclCommInitRank. Its third parameter, the 128-byte
// ncclUniqueId, is passed by value: under the System V AMD64 ABI a struct
// over 16 bytes is of class MEMORY, copied to the stack in the argument
// order, and takes no register, so comm, nranks and rank travel in the
// first three integer registers and the id's 16 eightbytes fill the
// first stack slots. purego's SyscallN puts arguments 7 and later on the
// stack, so the call is (comm, nranks, rank, 0, 0, 0, id...): the three
// zeros fill the unused registers rcx, r8 and r9.
//
// out receives the communicator: it must not be on a goroutine stack
// (its address travels in a prebuilt argument list, which //go:uintptrescapes
// of ccall does not see), so callers pass a field of a heap object.
func (n *ncclAPI) initRank(out *uintptr, id *NCCLID, nranks, rank int) error {
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("%w: NCCL bindings are for linux/amd64 (this is %s)", ErrLibrary, runtime.GOARCH)
	}
	args := make([]uintptr, 6, 6+NCCLIDBytes/8)
	args[0], args[1], args[2] = uintptr(unsafe.Pointer(out)), uintptr(nranks), uintptr(rank)
	for i := 0; i < NCCLIDBytes; i += 8 {
		args = append(args, uintptr(*(*uint64)(unsafe.Pointer(&id[i]))))
	}
	r := ccall(n.ncclCommInitRank, args...)
	runtime.KeepAlive(out)
	return n.check("ncclCommInitRank", fmt.Sprintf("rank %d of %d", rank, nranks), 0, r)
}

// NCCLWatchdog bounds the NCCL calls that block. ncclCommInitRank waits
// for every rank of the communicator, and a group's first exchange with a
// peer waits for the peer to connect: a peer that never comes (it failed
// before the call, or NCCL cannot reach it) holds the calling thread, and
// the Context's lock, for good, and nothing can interrupt the call. When a
// call has not returned after Limit, Stuck is called (on another
// goroutine) with what is stuck; the call goes on waiting.
type NCCLWatchdog struct {
	Limit time.Duration
	Stuck func(call string, waited time.Duration)
}

// DefaultNCCLLimit is the default watchdog's limit.
const DefaultNCCLLimit = 10 * time.Minute

var ncclDog atomic.Pointer[NCCLWatchdog]

func init() {
	ncclDog.Store(&NCCLWatchdog{Limit: DefaultNCCLLimit, Stuck: exitStuck})
}

// NCCLLimitFor is the watchdog's limit for ranks whose collectives over
// their transport time out after commTimeout (a peer that silent is an
// error): the NCCL calls that block wait for the same peers, which have
// met on the transport just before (the NCCL id travels over it), so four
// times that, at least 2 minutes (a large communicator's set-up takes
// time), at most DefaultNCCLLimit.
func NCCLLimitFor(commTimeout time.Duration) time.Duration {
	return min(max(4*commTimeout, 2*time.Minute), DefaultNCCLLimit)
}

// SetNCCLLimit sets the watchdog's limit (zero: none), keeping what it
// does when a call is stuck, and returns a function that puts the
// previous watchdog back.
func SetNCCLLimit(limit time.Duration) (restore func()) {
	w := *ncclDog.Load()
	w.Limit = limit
	return SetNCCLWatchdog(w)
}

// SetNCCLWatchdog replaces the watchdog (zero Limit: none) and returns a
// function that puts the previous one back.
func SetNCCLWatchdog(w NCCLWatchdog) (restore func()) {
	old := ncclDog.Swap(&w)
	return func() { ncclDog.Store(old) }
}

// exitStuck is the default watchdog's Stuck: the process cannot get the
// thread back, so it says why and exits (status 70); its supervisor (the
// worker, or launch) then stops the other ranks and restarts the job.
func exitStuck(call string, waited time.Duration) {
	fmt.Fprintf(os.Stderr, "switchyard: %s has not returned after %v: a rank of the NCCL communicator never took part "+
		"(it failed, or NCCL cannot reach it: see NCCL_SOCKET_IFNAME, NCCL_DEBUG=INFO); the call cannot be interrupted, so the process exits\n", call, waited)
	os.Exit(70)
}

// watched runs f, the blocking NCCL call that call names, under the
// watchdog.
func watched(call func() string, f func() error) error {
	w := ncclDog.Load()
	if w == nil || w.Limit <= 0 || w.Stuck == nil {
		return f()
	}
	var returned atomic.Bool
	t := time.AfterFunc(w.Limit, func() {
		if !returned.Load() { // not a call that returned as the timer fired
			w.Stuck(call(), w.Limit)
		}
	})
	defer t.Stop()
	defer returned.Store(true)
	return f()
}

// ncclHost is what a communicator needs from the device it runs on:
// calls made with the device's context current on a locked OS thread,
// and a way to tell when the work enqueued so far has finished.
type ncclHost interface {
	do(f func() error) error
	// mark places a marker after the work enqueued so far; done reports
	// whether the device has passed it.
	mark() (done func() (bool, error), release func(), err error)
}

// NCCL is one rank's NCCL communicator on a Context. Its methods may be
// called from any goroutine, one at a time (a collective of a group must
// be enqueued by all its ranks in the same order).
type NCCL struct {
	mu     sync.Mutex
	api    *ncclAPI
	host   ncclHost
	comm   uintptr
	rank   int
	size   int
	closed bool
	onDone func(*NCCL) // the Context forgets it
	// scratch for AllToAllV, reused
	ops []p2p
}

// NCCLVersion loads NCCL and reports its version ("2.21.5").
func NCCLVersion() (string, error) {
	n, err := loadNCCL()
	if err != nil {
		return "", err
	}
	v, err := n.version()
	if err != nil {
		return "", err
	}
	return ncclVersionString(v), nil
}

// ncclVersionString decodes NCCL_VERSION_CODE (X*1000+Y*100+Z up to 2.8,
// X*10000+Y*100+Z after).
func ncclVersionString(v int) string {
	if v < 20900 {
		return fmt.Sprintf("%d.%d.%d", v/1000, v%1000/100, v%100)
	}
	return fmt.Sprintf("%d.%d.%d", v/10000, v%10000/100, v%100)
}

// NewNCCLID makes a unique id for a new communicator (one rank calls it
// and sends the id to the others). It needs no device.
func NewNCCLID() (NCCLID, error) {
	n, err := loadNCCL()
	if err != nil {
		return NCCLID{}, err
	}
	return n.uniqueID()
}

func (n *ncclAPI) uniqueID() (NCCLID, error) {
	var id NCCLID
	err := n.check("ncclGetUniqueId", "", 0, ccall(n.ncclGetUniqueId, uintptr(unsafe.Pointer(&id[0]))))
	return id, err
}

// OpenNCCL joins communicator id as rank of size on c's GPU. It returns
// when every rank has joined (NCCL's bootstrap); a rank that never joins
// leaves the others waiting until NCCL's own timeouts, or the watchdog's
// (NCCLWatchdog). Close (or the Context's Close) destroys it.
func (c *Context) OpenNCCL(id NCCLID, size, rank int) (*NCCL, error) {
	api, err := loadNCCL()
	if err != nil {
		return nil, err
	}
	// registered with the Context in the critical section that made it
	// (c is locked there), so a Close of the Context cannot miss it
	return openNCCL(api, ctxHost{c}, id, size, rank, func(nc *NCCL) {
		if c.nccls == nil {
			c.nccls = map[*NCCL]struct{}{}
		}
		c.nccls[nc] = struct{}{}
		nc.onDone = func(n *NCCL) {
			c.mu.Lock()
			delete(c.nccls, n)
			c.mu.Unlock()
		}
	})
}

// openNCCL makes the communicator; opened (may be nil) runs in the same
// host.do as the init once it succeeded.
func openNCCL(api *ncclAPI, host ncclHost, id NCCLID, size, rank int, opened func(*NCCL)) (*NCCL, error) {
	if size < 1 || rank < 0 || rank >= size {
		return nil, fmt.Errorf("%w: NCCL rank %d of %d", ErrCollective, rank, size)
	}
	nc := &NCCL{api: api, host: host, rank: rank, size: size}
	err := host.do(func() error {
		if err := watched(func() string { return fmt.Sprintf("ncclCommInitRank (rank %d of %d)", rank, size) }, func() error {
			return api.initRank(&nc.comm, &id, size, rank)
		}); err != nil {
			return err
		}
		if err := nc.verify(); err != nil {
			ccall(api.ncclCommAbort, nc.comm)
			return err
		}
		if opened != nil {
			opened(nc)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return nc, nil
}

// verify checks that the communicator is what was asked for (a check of
// the by-value id's calling convention as much as of NCCL).
func (nc *NCCL) verify() error {
	api := nc.api
	var count, me int32
	if err := api.check("ncclCommCount", "", nc.comm, ccall(api.ncclCommCount, nc.comm, uintptr(unsafe.Pointer(&count)))); err != nil {
		return err
	}
	if err := api.check("ncclCommUserRank", "", nc.comm, ccall(api.ncclCommUserRank, nc.comm, uintptr(unsafe.Pointer(&me)))); err != nil {
		return err
	}
	if int(count) != nc.size || int(me) != nc.rank {
		return fmt.Errorf("%w: NCCL made rank %d of %d, asked for rank %d of %d", ErrCollective, me, count, nc.rank, nc.size)
	}
	return nil
}

// Rank and Size are the rank's place in the communicator.
func (n *NCCL) Rank() int { return n.rank }
func (n *NCCL) Size() int { return n.size }

// call runs f, NCCL calls on the communicator, with the context current.
func (n *NCCL) call(f func() error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("%w: communicator closed", ErrCollective)
	}
	return n.host.do(f)
}

// named is what the watchdog calls call on this communicator.
func (n *NCCL) named(call string) func() string {
	return func() string { return fmt.Sprintf("%s (rank %d of %d)", call, n.rank, n.size) }
}

// enqueue is call for a collective named what, under the watchdog.
func (n *NCCL) enqueue(what string, f func() error) error {
	return n.call(func() error { return watched(n.named(what), f) })
}

func ncclType(dt DType) (uintptr, error) {
	t, ok := ncclTypes[dt]
	if !ok {
		return 0, fmt.Errorf("%w: NCCL has no type for %v", ErrCollective, dt)
	}
	return t, nil
}

func counted(count int) error {
	if count < 0 {
		return fmt.Errorf("%w: negative count %d", ErrCollective, count)
	}
	return nil
}

// AllReduce reduces count elements of send over the ranks into recv on
// every rank (send == recv: in place).
func (n *NCCL) AllReduce(send, recv DevPtr, count int, dt DType, op NCCLOp) error {
	t, err := ncclType(dt)
	if err != nil {
		return err
	}
	if err := counted(count); err != nil {
		return err
	}
	return n.enqueue("ncclAllReduce", func() error {
		a := n.api
		return a.check("ncclAllReduce", fmt.Sprintf("%d %v, %v", count, dt, op), n.comm,
			ccall(a.ncclAllReduce, uintptr(send), uintptr(recv), uintptr(count), t, uintptr(op), n.comm, 0))
	})
}

// ReduceScatter reduces Size()*recvCount elements of send over the ranks;
// rank r receives block r (recvCount elements) in recv.
func (n *NCCL) ReduceScatter(send, recv DevPtr, recvCount int, dt DType, op NCCLOp) error {
	t, err := ncclType(dt)
	if err != nil {
		return err
	}
	if err := counted(recvCount); err != nil {
		return err
	}
	return n.enqueue("ncclReduceScatter", func() error {
		a := n.api
		return a.check("ncclReduceScatter", fmt.Sprintf("%d %v per rank, %v", recvCount, dt, op), n.comm,
			ccall(a.ncclReduceScatter, uintptr(send), uintptr(recv), uintptr(recvCount), t, uintptr(op), n.comm, 0))
	})
}

// AllGather gathers sendCount elements from every rank into recv (rank
// r's at r*sendCount); send may be recv's own block (in place).
func (n *NCCL) AllGather(send, recv DevPtr, sendCount int, dt DType) error {
	t, err := ncclType(dt)
	if err != nil {
		return err
	}
	if err := counted(sendCount); err != nil {
		return err
	}
	return n.enqueue("ncclAllGather", func() error {
		a := n.api
		return a.check("ncclAllGather", fmt.Sprintf("%d %v per rank", sendCount, dt), n.comm,
			ccall(a.ncclAllGather, uintptr(send), uintptr(recv), uintptr(sendCount), t, n.comm, 0))
	})
}

// Broadcast copies count elements of root's send into every rank's recv.
func (n *NCCL) Broadcast(send, recv DevPtr, count int, dt DType, root int) error {
	t, err := ncclType(dt)
	if err != nil {
		return err
	}
	if err := counted(count); err != nil {
		return err
	}
	if root < 0 || root >= n.size {
		return fmt.Errorf("%w: broadcast root %d of %d ranks", ErrCollective, root, n.size)
	}
	return n.enqueue("ncclBroadcast", func() error {
		a := n.api
		return a.check("ncclBroadcast", fmt.Sprintf("%d %v from rank %d", count, dt, root), n.comm,
			ccall(a.ncclBroadcast, uintptr(send), uintptr(recv), uintptr(count), t, uintptr(root), n.comm, 0))
	})
}

// p2p is one send or receive of a grouped exchange.
type p2p struct {
	send  bool
	buf   DevPtr
	count int
	peer  int
}

// AllToAllV sends sendCounts[j] elements to rank j, read contiguously
// from send in rank order, and receives recvCounts[j] elements from rank j
// into recv in rank order: one NCCL group of sends and receives (the
// counts must agree pairwise, as with any all-to-all-v).
func (n *NCCL) AllToAllV(send DevPtr, sendCounts []int, recv DevPtr, recvCounts []int, dt DType) error {
	t, err := ncclType(dt)
	if err != nil {
		return err
	}
	if len(sendCounts) != n.size || len(recvCounts) != n.size {
		return fmt.Errorf("%w: all-to-all-v over %d ranks with %d send and %d receive counts", ErrCollective, n.size, len(sendCounts), len(recvCounts))
	}
	es := dt.Size()
	ops := n.ops[:0]
	var so, ro int64
	for j := 0; j < n.size; j++ {
		if sendCounts[j] < 0 || recvCounts[j] < 0 {
			return fmt.Errorf("%w: negative count for rank %d", ErrCollective, j)
		}
		ops = append(ops, p2p{send: true, buf: send.Add(so * es), count: sendCounts[j], peer: j},
			p2p{buf: recv.Add(ro * es), count: recvCounts[j], peer: j})
		so += int64(sendCounts[j])
		ro += int64(recvCounts[j])
	}
	n.ops = ops
	return n.enqueue("all-to-all-v (ncclGroupEnd)", func() error {
		a := n.api
		if err := a.check("ncclGroupStart", "", n.comm, ccall(a.ncclGroupStart)); err != nil {
			return err
		}
		var first error
		for _, o := range ops {
			if o.count == 0 {
				continue
			}
			if o.send {
				err = a.check("ncclSend", fmt.Sprintf("%d %v to rank %d", o.count, dt, o.peer), n.comm,
					ccall(a.ncclSend, uintptr(o.buf), uintptr(o.count), t, uintptr(o.peer), n.comm, 0))
			} else {
				err = a.check("ncclRecv", fmt.Sprintf("%d %v from rank %d", o.count, dt, o.peer), n.comm,
					ccall(a.ncclRecv, uintptr(o.buf), uintptr(o.count), t, uintptr(o.peer), n.comm, 0))
			}
			if err != nil {
				first = err
				break
			}
		}
		// the group is always ended: a thread left inside a group would
		// put its next calls in it
		end := a.check("ncclGroupEnd", fmt.Sprintf("all-to-all-v over %d ranks", n.size), n.comm, ccall(a.ncclGroupEnd))
		if first != nil {
			return first
		}
		return end
	})
}

// AsyncError reports an error NCCL met while running enqueued work (a
// peer that failed, a network error); nil while all is well.
func (n *NCCL) AsyncError() error {
	return n.call(func() error { return n.asyncError() })
}

func (n *NCCL) asyncError() error {
	var r int32
	a := n.api
	if err := a.check("ncclCommGetAsyncError", "", n.comm, ccall(a.ncclCommGetAsyncError, n.comm, uintptr(unsafe.Pointer(&r)))); err != nil {
		return err
	}
	if r == ncclSuccess || r == ncclInProgress {
		return nil
	}
	return a.check("NCCL (asynchronous)", fmt.Sprintf("rank %d of %d", n.rank, n.size), n.comm, uintptr(uint32(r)))
}

// ncclPoll is how often Wait looks at the device and the communicator.
const ncclPoll = 200 * time.Microsecond

// Wait returns when the device has finished the work enqueued so far
// (the collectives and everything before them). If NCCL reports an
// asynchronous error, or ctx ends first, it aborts the communicator, so
// that the device is not left waiting for a peer that will never come,
// and returns an error wrapping ErrCollective: the communicator is then
// unusable (Close it).
func (n *NCCL) Wait(ctx context.Context) error {
	var done func() (bool, error)
	var release func()
	if err := n.call(func() error {
		var err error
		done, release, err = n.host.mark()
		return err
	}); err != nil {
		return err
	}
	defer func() { _ = n.host.do(func() error { release(); return nil }) }()
	t := time.NewTicker(ncclPoll)
	defer t.Stop()
	for {
		var fin bool
		err := n.call(func() error {
			var err error
			if fin, err = done(); err != nil || fin {
				return err
			}
			return n.asyncError()
		})
		if fin && err == nil {
			return nil
		}
		if err != nil {
			return errors.Join(err, n.Abort())
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%w: rank %d of %d gave up waiting: %w", ErrCollective, n.rank, n.size, context.Cause(ctx)), n.Abort())
		case <-t.C:
		}
	}
}

// Abort tears the communicator down without waiting for its work (the
// device's pending collectives are cancelled). Later calls fail.
func (n *NCCL) Abort() error {
	return n.end("ncclCommAbort", func() uintptr { return n.api.ncclCommAbort })
}

// Close destroys the communicator after its work has finished.
func (n *NCCL) Close() error {
	return n.end("ncclCommDestroy", func() uintptr { return n.api.ncclCommDestroy })
}

func (n *NCCL) end(call string, fn func() uintptr) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	// under n.mu, as every call: a second Close waits for this one
	err := n.host.do(func() error {
		return watched(n.named(call), func() error { return n.api.check(call, "", 0, ccall(fn(), n.comm)) })
	})
	n.mu.Unlock()
	if n.onDone != nil {
		n.onDone(n)
	}
	return err
}

// ctxHost runs a communicator's calls on a Context.
type ctxHost struct{ c *Context }

func (h ctxHost) do(f func() error) error {
	if err := h.c.lock(); err != nil {
		return err
	}
	defer h.c.unlock()
	return f()
}

func (h ctxHost) mark() (func() (bool, error), func(), error) {
	d := h.c.drv
	ev, err := d.eventCreate(cuEventDisableTiming)
	if err != nil {
		return nil, nil, err
	}
	if err := d.eventRecord(ev, cuStreamNull); err != nil {
		_ = d.eventDestroy(ev)
		return nil, nil, err
	}
	done := func() (bool, error) { return d.eventQuery(ev) }
	return done, func() { _ = d.eventDestroy(ev) }, nil
}
