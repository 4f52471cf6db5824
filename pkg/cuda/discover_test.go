package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeFS is a file tree under a temporary root standing for "/".
type fakeFS struct{ root string }

func newFakeFS(t *testing.T, files ...string) fakeFS {
	t.Helper()
	fs := fakeFS{root: t.TempDir()}
	for _, f := range files {
		p := filepath.Join(fs.root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return fs
}

func (fs fakeFS) glob(pattern string) []string {
	m, err := filepath.Glob(filepath.Join(fs.root, pattern))
	if err != nil {
		panic(err)
	}
	for i := range m {
		m[i] = strings.TrimPrefix(m[i], fs.root)
	}
	return m
}

func (fs fakeFS) exists(path string) bool {
	st, err := os.Stat(filepath.Join(fs.root, path))
	return err == nil && !st.IsDir()
}

// fakeOpen "loads" every path except those in fail; bare sonames load
// only when listed in system. It records what was tried.
type fakeOpen struct {
	system map[string]bool
	fail   map[string]string
	tried  []string
}

func (o *fakeOpen) open(path string) (uintptr, error) {
	o.tried = append(o.tried, path)
	if msg, ok := o.fail[path]; ok {
		return 0, errors.New(msg)
	}
	if !strings.ContainsRune(path, '/') && !o.system[path] {
		return 0, fmt.Errorf("%s: cannot open shared object file: No such file or directory", path)
	}
	return 1, nil
}

// torchEnv is the GPU machine: PyTorch's venv in /opt/torch, the driver
// mounted at /usr/local/nvidia.
func torchEnv(fs fakeFS) searchEnv {
	return searchEnv{
		Python:         "/opt/torch/.venv/bin/python3",
		PythonResolved: "/usr/bin/python3.12",
		Home:           "/root",
		Glob:           fs.glob,
	}
}

var torchFiles = []string{
	"/usr/local/nvidia/lib64/libcuda.so.1",
	"/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublasLt.so.12",
	"/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublas.so.12",
	"/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2",
	"/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9",
}

func TestPlanSearchOrder(t *testing.T) {
	fs := newFakeFS(t,
		"/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cublas/lib/x",
		"/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/x",
		"/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nvidia/cu13/lib/x", // nvidia/*/*/lib
		"/venv/lib/python3.11/site-packages/nvidia/nccl/lib/x",
		"/usr/local/lib/python3.11/dist-packages/nvidia/cudnn/lib/x",
		"/usr/lib/python3/dist-packages/nvidia/curand/lib/x",
		"/root/.local/lib/python3.12/site-packages/nvidia/cufft/lib/x",
		"/usr/lib/python3.12/site-packages/nvidia/nvjitlink/lib/x",
		"/opt/other/.venv/lib/python3.10/site-packages/nvidia/cusparse/lib/x",
	)
	e := torchEnv(fs)
	e.LibDir = "/a:/b"
	e.LDPath = "/c::/a" // an empty entry and a repeat
	e.VirtualEnv = "/venv"
	p := planSearch(e)

	var got []string
	for _, s := range p.steps {
		if s.system {
			got = append(got, "<system>")
		} else {
			got = append(got, s.dir)
		}
	}
	sp := "/opt/torch/.venv/lib/python3.12/site-packages/nvidia"
	want := []string{
		"/a", "/b", "/c", // SWITCHYARD_CUDA_LIB_DIR, then LD_LIBRARY_PATH (no repeat of /a)
		"<system>",
		"/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/local/cuda/lib64",
		sp + "/cu13/lib", sp + "/cublas/lib", sp + "/nvidia/cu13/lib", // python3 on PATH, as found
		"/usr/lib/python3.12/site-packages/nvidia/nvjitlink/lib", // python3 resolved
		"/venv/lib/python3.11/site-packages/nvidia/nccl/lib",     // $VIRTUAL_ENV
		"/usr/local/lib/python3.11/dist-packages/nvidia/cudnn/lib",
		"/usr/lib/python3/dist-packages/nvidia/curand/lib",
		"/opt/other/.venv/lib/python3.10/site-packages/nvidia/cusparse/lib", // /opt/*/.venv (torch's already listed)
		"/root/.local/lib/python3.12/site-packages/nvidia/cufft/lib",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("search order:\n got %q\nwant %q", got, want)
	}
	wantWhere := "SWITCHYARD_CUDA_LIB_DIR (/a:/b), LD_LIBRARY_PATH (/c::/a), the system loader, " +
		"/usr/local/nvidia/lib64, /usr/local/nvidia/lib, /usr/lib/x86_64-linux-gnu, /usr/local/cuda/lib64, " +
		"the nvidia-* Python wheels (" + strings.Join(want[8:], ", ") + ")"
	if p.where != wantWhere {
		t.Errorf("where:\n got %s\nwant %s", p.where, wantWhere)
	}
}

// A conda environment's lib comes after the wheels, said where it is.
func TestPlanSearchConda(t *testing.T) {
	fs := newFakeFS(t)
	p := planSearch(searchEnv{CondaPrefix: "/opt/conda/envs/train", Glob: fs.glob})
	last := p.steps[len(p.steps)-1]
	if last.dir != "/opt/conda/envs/train/lib" || !strings.HasSuffix(p.where, "the nvidia-* Python wheels (none found), the conda environment's lib (/opt/conda/envs/train/lib)") {
		t.Errorf("steps %+v, where %s", p.steps, p.where)
	}
}

func TestPlanSearchEmpty(t *testing.T) {
	fs := newFakeFS(t)
	p := planSearch(searchEnv{Glob: fs.glob})
	want := "SWITCHYARD_CUDA_LIB_DIR (unset), LD_LIBRARY_PATH (unset), the system loader, " +
		"/usr/local/nvidia/lib64, /usr/local/nvidia/lib, /usr/lib/x86_64-linux-gnu, /usr/local/cuda/lib64, " +
		"the nvidia-* Python wheels (none found)"
	if p.where != want {
		t.Errorf("where:\n got %s\nwant %s", p.where, want)
	}
	if len(p.steps) != 5 || !p.steps[0].system {
		t.Errorf("steps %+v: want the system loader and the 4 fixed folders", p.steps)
	}
}

// On the GPU machine the driver comes from /usr/local/nvidia/lib64 and
// cuBLAS, cuBLASLt and NCCL from the torch venv's wheels.
func TestLocateTorchMachine(t *testing.T) {
	fs := newFakeFS(t, torchFiles...)
	e := torchEnv(fs)
	o := &fakeOpen{}
	ld := loader{exists: fs.exists, open: o.open}
	p := planSearch(e)
	wheel := "/opt/torch/.venv/lib/python3.12/site-packages/nvidia"
	for _, tc := range []struct {
		role libRole
		want string
	}{
		{roleDriver, "/usr/local/nvidia/lib64/libcuda.so.1"},
		{roleLt, wheel + "/cublas/lib/libcublasLt.so.12"},
		{roleNCCL, wheel + "/nccl/lib/libnccl.so.2"},
	} {
		l, err := ld.locate(tc.role, p)
		if err != nil {
			t.Fatalf("%s: %v", tc.role.name, err)
		}
		if l.path != tc.want {
			t.Errorf("%s: found %s, want %s", tc.role.name, l.path, tc.want)
		}
	}
	lt, _ := ld.locate(roleLt, p)
	b, err := ld.locate(blasRole(lt), p.first(lt.dir()))
	if err != nil {
		t.Fatal(err)
	}
	if want := wheel + "/cublas/lib/libcublas.so.12"; b.path != want {
		t.Errorf("cuBLAS: found %s, want %s", b.path, want)
	}
	if lt.major() != "12" {
		t.Errorf("major of %s = %q", lt.soname, lt.major())
	}
}

func TestLocateOrder(t *testing.T) {
	fs := newFakeFS(t,
		"/env/libcublasLt.so.12",
		"/ld/libcublasLt.so.13",
		"/usr/local/cuda/lib64/libcublasLt.so.13",
	)
	e := searchEnv{LibDir: "/env", LDPath: "/ld", Glob: fs.glob}
	o := &fakeOpen{system: map[string]bool{"libcublasLt.so.12": true}}
	ld := loader{exists: fs.exists, open: o.open}

	// SWITCHYARD_CUDA_LIB_DIR wins over a newer version further down.
	l, err := ld.locate(roleLt, planSearch(e))
	if err != nil || l.path != "/env/libcublasLt.so.12" {
		t.Fatalf("got %+v, %v; want /env/libcublasLt.so.12", l, err)
	}
	// Without it, LD_LIBRARY_PATH.
	e.LibDir = ""
	if l, err = ld.locate(roleLt, planSearch(e)); err != nil || l.path != "/ld/libcublasLt.so.13" {
		t.Fatalf("got %+v, %v; want /ld/libcublasLt.so.13", l, err)
	}
	// Then the system loader, before the fixed folders; .13 is asked first.
	e.LDPath = ""
	o.tried = nil
	if l, err = ld.locate(roleLt, planSearch(e)); err != nil || l.path != "libcublasLt.so.12" {
		t.Fatalf("got %+v, %v; want the system loader's libcublasLt.so.12", l, err)
	}
	if want := []string{"libcublasLt.so.13", "libcublasLt.so.12"}; !reflect.DeepEqual(o.tried, want) {
		t.Errorf("tried %q, want %q", o.tried, want)
	}
	// A file that is there but does not load is skipped and reported.
	o.system = nil
	o.fail = map[string]string{"/usr/local/cuda/lib64/libcublasLt.so.13": "/usr/local/cuda/lib64/libcublasLt.so.13: wrong ELF class: ELFCLASS32"}
	_, err = ld.locate(roleLt, planSearch(e))
	if err == nil || !strings.Contains(err.Error(), "; found but could not load: /usr/local/cuda/lib64/libcublasLt.so.13: wrong ELF class: ELFCLASS32: install") {
		t.Errorf("err = %v", err)
	}
}

func TestNotFoundMessages(t *testing.T) {
	fs := newFakeFS(t)
	ld := loader{exists: fs.exists, open: (&fakeOpen{}).open}
	p := planSearch(searchEnv{LDPath: "/x:/y", Glob: fs.glob})

	_, err := ld.locate(roleDriver, p)
	want := "no NVIDIA driver: libcuda.so.1 not found (looked in SWITCHYARD_CUDA_LIB_DIR (unset), " +
		"LD_LIBRARY_PATH (/x:/y), the system loader, /usr/local/nvidia/lib64, /usr/local/nvidia/lib, " +
		"/usr/lib/x86_64-linux-gnu, /usr/local/cuda/lib64, the nvidia-* Python wheels (none found))"
	if err == nil || err.Error() != want {
		t.Errorf("driver:\n got %v\nwant %s", err, want)
	}
	if !errors.Is(err, ErrNoDevice) || errors.Is(err, ErrLibrary) {
		t.Errorf("driver error %v must wrap ErrNoDevice only", err)
	}

	_, err = ld.locate(roleLt, p)
	want = "cuda: cuBLASLt (libcublasLt.so.13 or libcublasLt.so.12) not found in SWITCHYARD_CUDA_LIB_DIR (unset), " +
		"LD_LIBRARY_PATH (/x:/y), the system loader, /usr/local/nvidia/lib64, /usr/local/nvidia/lib, " +
		"/usr/lib/x86_64-linux-gnu, /usr/local/cuda/lib64, the nvidia-* Python wheels (none found): " +
		"install the CUDA toolkit or the nvidia-cublas wheel, or set SWITCHYARD_CUDA_LIB_DIR"
	if err == nil || err.Error() != want {
		t.Errorf("cuBLASLt:\n got %v\nwant %s", err, want)
	}
	if !errors.Is(err, ErrLibrary) {
		t.Errorf("cuBLASLt error %v must wrap ErrLibrary", err)
	}

	lt := &library{soname: "libcublasLt.so.13", path: "/opt/cuda/libcublasLt.so.13"}
	_, err = ld.locate(blasRole(lt), p.first(lt.dir()))
	if err == nil || !strings.HasPrefix(err.Error(), "cuda: cuBLAS (libcublas.so.13) not found in /opt/cuda, SWITCHYARD_CUDA_LIB_DIR (unset)") {
		t.Errorf("cuBLAS: %v", err)
	}

	_, err = ld.locate(roleNCCL, p)
	if err == nil || !strings.HasPrefix(err.Error(), "cuda: NCCL (libnccl.so.2) not found in ") ||
		!strings.HasSuffix(err.Error(), ": install NCCL or the nvidia-nccl wheel, or set SWITCHYARD_CUDA_LIB_DIR") {
		t.Errorf("NCCL: %v", err)
	}
}

// A dependency the system loader misses is worth reporting; the library
// itself missing is not.
func TestLocateSystemLoaderErrors(t *testing.T) {
	fs := newFakeFS(t)
	o := &fakeOpen{fail: map[string]string{
		"libcublas.so.12": "libcublasLt.so.12: cannot open shared object file: No such file or directory",
	}}
	ld := loader{exists: fs.exists, open: o.open}
	_, err := ld.locate(roleBLAS, planSearch(searchEnv{Glob: fs.glob}))
	if err == nil || !strings.Contains(err.Error(), "; found but could not load: libcublasLt.so.12: cannot open shared object file") {
		t.Errorf("err = %v", err)
	}
	if strings.Contains(err.Error(), "libcublas.so.13: cannot open") {
		t.Errorf("the plain miss of libcublas.so.13 is reported: %v", err)
	}
}

func TestSplitPath(t *testing.T) {
	if got := splitPath(":/a::/b:"); !reflect.DeepEqual(got, []string{"/a", "/b"}) {
		t.Errorf("splitPath = %q", got)
	}
	if got := splitPath(""); got != nil {
		t.Errorf("splitPath(\"\") = %q", got)
	}
}
