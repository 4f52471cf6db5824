package cuda

import (
	"errors"
	"strings"
	"testing"
)

// fakeRingSync models the device: a copy staged in a region is known
// done only after the event recorded when leaving the region has been
// waited for.
type fakeRingSync struct {
	takes    []ringTake
	recorded map[int][]int // region -> the takes its recorded event covers
	log      []string
}

type ringTake struct {
	region   int
	from, to int64
	done     bool
}

func (f *fakeRingSync) leave(i int) error {
	var covered []int
	for t, tk := range f.takes {
		if tk.region == i && !tk.done {
			covered = append(covered, t)
		}
	}
	f.recorded[i] = covered
	f.log = append(f.log, "leave "+itoa(int64(i)))
	return nil
}

func (f *fakeRingSync) enter(i int) error {
	for _, t := range f.recorded[i] {
		f.takes[t].done = true
	}
	delete(f.recorded, i)
	f.log = append(f.log, "enter "+itoa(int64(i)))
	return nil
}

func TestRing(t *testing.T) {
	const region, regions = 1024, 3
	r := newRing(region, regions)
	f := &fakeRingSync{recorded: map[int][]int{}}
	sizes := []int64{1, 100, 1024, 512, 512, 513, 64, 1000, 3, 1024, 1024, 1024, 200, 800, 30, 1024, 7, 1024}
	for i, n := range sizes {
		o, err := r.take(n, f)
		if err != nil {
			t.Fatal(err)
		}
		if o < 0 || o+n > region*regions || o/region != (o+n-1)/region {
			t.Fatalf("take %d of %d bytes: offset %d is not inside one region", i, n, o)
		}
		for j, tk := range f.takes {
			if !tk.done && o < tk.to && tk.from < o+n {
				t.Fatalf("take %d [%d,%d) overlaps take %d [%d,%d) still in flight (log %v)", i, o, o+n, j, tk.from, tk.to, f.log)
			}
		}
		f.takes = append(f.takes, ringTake{region: int(o / region), from: o, to: o + n})
	}
	if !strings.Contains(strings.Join(f.log, ","), "enter 0") {
		t.Errorf("the ring never wrapped: %v", f.log)
	}
}

func TestNulTerminated(t *testing.T) {
	if got := nulTerminated([]byte("ab")); string(got) != "ab\x00" {
		t.Errorf("%q", got)
	}
	b := []byte("ab\x00")
	if got := nulTerminated(b); &got[0] != &b[0] {
		t.Error("copied an already terminated image")
	}
}

// On a machine without the driver, Open says where it looked.
func TestOpenWithoutDriver(t *testing.T) {
	if _, err := loadDriver(); err == nil {
		t.Skip("the CUDA driver is present on this machine")
	}
	c, err := Open(Options{})
	if err == nil {
		c.Close()
		t.Fatal("Open succeeded without a driver")
	}
	if !errors.Is(err, ErrNoDevice) {
		t.Errorf("%v does not wrap ErrNoDevice", err)
	}
	const prefix = "no NVIDIA driver: libcuda.so.1 not found (looked in SWITCHYARD_CUDA_LIB_DIR"
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("error %q does not start with %q", err, prefix)
	}
	info, err := Probe()
	if !errors.Is(err, ErrNoDevice) || len(info.Libraries) != 1 || info.Libraries[0].Err == "" {
		t.Errorf("Probe: %+v, %v", info, err)
	}
	if s := info.String(); !strings.Contains(s, "the CUDA driver: no NVIDIA driver") {
		t.Errorf("Probe report: %s", s)
	}
}

func TestDeviceInterfaceValues(t *testing.T) {
	var k Kernel = &kernel{name: "x"}
	if k.Name() != "x" {
		t.Error(k.Name())
	}
	c := &Context{closed: true}
	if _, err := c.Alloc(4); !errors.Is(err, ErrNoDevice) {
		t.Errorf("Alloc on a closed Context: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := c.Launch(&kernel{}, D1(1), D1(1), 0); !errors.Is(err, ErrLaunch) {
		t.Errorf("Launch of a foreign kernel: %v", err)
	}
	if _, err := c.Elapsed(nil, nil); !errors.Is(err, ErrLaunch) {
		t.Errorf("Elapsed of foreign events: %v", err)
	}
}

// TestCheckLaunch: the launch limits of sm_80/sm_90, which the emulator
// enforces as a GPU would.
func TestCheckLaunch(t *testing.T) {
	for _, c := range []struct {
		grid, block Dim3
		shared      int
		ok          bool
	}{
		{D1(1), D1(1), 0, true},
		{Dim3{X: MaxGridX, Y: MaxGridYZ, Z: MaxGridYZ}, Dim3{X: 32, Y: 32, Z: 1}, MaxDynamicShared, true},
		{Dim3{X: 1, Y: MaxGridYZ + 1, Z: 1}, D1(32), 0, false},
		{Dim3{X: 1, Y: 1, Z: MaxGridYZ + 1}, D1(32), 0, false},
		{D1(1), D1(1025), 0, false},
		{D1(1), Dim3{X: 64, Y: 32, Z: 1}, 0, false}, // 2048 threads
		{D1(1), Dim3{X: 1, Y: 1, Z: 65}, 0, false},
		{D1(1), D1(32), MaxDynamicShared + 1, false},
		{Dim3{X: -1, Y: 1, Z: 1}, D1(32), 0, false},
		{D1(1), D1(32), -1, false},
	} {
		if err := CheckLaunch(c.grid, c.block, c.shared); (err == nil) != c.ok {
			t.Errorf("grid %v block %v shared %d: %v, want ok %v", c.grid, c.block, c.shared, err, c.ok)
		}
	}
}
