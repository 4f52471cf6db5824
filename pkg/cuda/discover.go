package cuda

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/ebitengine/purego"
)

// Library discovery. The pure part (planSearch: the folders to look in,
// given the environment and a glob function; loader.locate: the first
// candidate that loads, given an existence test and an opener) is kept
// apart from dlopen so that it is tested with temporary folders.
//
// Order, for every library:
//
//  1. each folder of SWITCHYARD_CUDA_LIB_DIR (colon-separated);
//  2. each folder of LD_LIBRARY_PATH;
//  3. the system loader (dlopen of the bare soname: ld.so.cache, RUNPATH);
//  4. /usr/local/nvidia/lib64, /usr/local/nvidia/lib,
//     /usr/lib/x86_64-linux-gnu, /usr/local/cuda/lib64;
//  5. the nvidia/*/lib and nvidia/*/*/lib folders of the nvidia-* Python
//     wheels, in the site-packages of: the python3 on PATH (as found and
//     with symlinks resolved), $VIRTUAL_ENV, /usr/local/lib/python3*
//     (dist-packages and site-packages), /usr/lib/python3/dist-packages,
//     /opt/*/.venv, ~/.local.
//
// Within a folder the sonames are tried in order (libcublasLt.so.13, then
// .12). cuBLAS is looked for first in cuBLASLt's folder and only with
// cuBLASLt's major version, since libcublas needs the libcublasLt of its
// own release.

// envLibDir names the folders searched first.
const envLibDir = "SWITCHYARD_CUDA_LIB_DIR"

// libRole is one library the package loads.
type libRole struct {
	name    string   // "cuBLASLt"
	sonames []string // in order of preference
	hint    string   // what to do when it is missing
	kind    error    // the sentinel a miss wraps
}

var (
	roleDriver = libRole{name: "the CUDA driver", sonames: []string{"libcuda.so.1"}, kind: ErrNoDevice}
	roleLt     = libRole{name: "cuBLASLt", sonames: []string{"libcublasLt.so.13", "libcublasLt.so.12"},
		hint: "install the CUDA toolkit or the nvidia-cublas wheel, or set " + envLibDir, kind: ErrLibrary}
	roleBLAS = libRole{name: "cuBLAS", sonames: []string{"libcublas.so.13", "libcublas.so.12"},
		hint: "install the CUDA toolkit or the nvidia-cublas wheel, or set " + envLibDir, kind: ErrLibrary}
	roleNCCL = libRole{name: "NCCL", sonames: []string{"libnccl.so.2"},
		hint: "install NCCL or the nvidia-nccl wheel, or set " + envLibDir, kind: ErrLibrary}
)

// fixedLibDirs are searched after the system loader.
var fixedLibDirs = []string{"/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/local/cuda/lib64"}

// searchEnv is what the search depends on.
type searchEnv struct {
	LibDir     string // $SWITCHYARD_CUDA_LIB_DIR
	LDPath     string // $LD_LIBRARY_PATH
	VirtualEnv string // $VIRTUAL_ENV
	// CondaPrefix is $CONDA_PREFIX: a conda environment keeps the CUDA
	// libraries its PyTorch uses (libnccl.so.2, libcublasLt.so.12) in lib.
	CondaPrefix string
	Home        string // the user's home folder
	// Python is the python3 found on PATH and PythonResolved the same with
	// symlinks resolved ("" when there is none). A virtual environment's
	// bin/python3 is a symlink to the system interpreter: the first gives
	// the venv's site-packages, the second the interpreter's.
	Python, PythonResolved string
	// Glob returns the existing paths matching a filepath.Match pattern,
	// sorted.
	Glob func(pattern string) []string
}

// hostSearchEnv reads the search environment of this process.
func hostSearchEnv() searchEnv {
	e := searchEnv{
		LibDir:      os.Getenv(envLibDir),
		LDPath:      os.Getenv("LD_LIBRARY_PATH"),
		VirtualEnv:  os.Getenv("VIRTUAL_ENV"),
		CondaPrefix: os.Getenv("CONDA_PREFIX"),
		Glob: func(pattern string) []string {
			m, _ := filepath.Glob(pattern) // the only error is a malformed pattern
			return m
		},
	}
	e.Home, _ = os.UserHomeDir()
	if p, err := exec.LookPath("python3"); err == nil {
		if a, err := filepath.Abs(p); err == nil {
			p = a
		}
		e.Python = p
		if r, err := filepath.EvalSymlinks(p); err == nil && r != p {
			e.PythonResolved = r
		}
	}
	return e
}

// searchStep is one place to look: a folder, or the system loader.
type searchStep struct {
	dir    string // "" with system
	system bool
}

// searchPlan is the ordered places and their description for errors.
type searchPlan struct {
	steps []searchStep
	where string
}

// splitPath splits a colon-separated list, dropping empty entries.
func splitPath(list string) []string {
	var dirs []string
	for _, d := range strings.Split(list, ":") {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

func envDesc(name, value string) string {
	if value == "" {
		return name + " (unset)"
	}
	return name + " (" + value + ")"
}

// sitePackages lists the site-packages folders to look for wheels in.
func sitePackages(e searchEnv) []string {
	var pats []string
	for _, py := range []string{e.Python, e.PythonResolved} {
		if py != "" {
			prefix := filepath.Dir(filepath.Dir(py)) // <prefix>/bin/python3
			pats = append(pats, filepath.Join(prefix, "lib", "python3*", "site-packages"))
		}
	}
	if e.VirtualEnv != "" {
		pats = append(pats, filepath.Join(e.VirtualEnv, "lib", "python3*", "site-packages"))
	}
	pats = append(pats,
		"/usr/local/lib/python3*/dist-packages",
		"/usr/local/lib/python3*/site-packages",
		"/usr/lib/python3/dist-packages",
		"/opt/*/.venv/lib/python3*/site-packages",
	)
	if e.Home != "" {
		pats = append(pats, filepath.Join(e.Home, ".local", "lib", "python3*", "site-packages"))
	}
	var out []string
	seen := map[string]bool{}
	for _, p := range pats {
		for _, d := range e.Glob(p) {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	return out
}

// wheelLibDirs lists the lib folders of the nvidia-* wheels (nvidia/cublas/lib,
// nvidia/cu13/lib, ...).
func wheelLibDirs(e searchEnv) []string {
	var out []string
	for _, sp := range sitePackages(e) {
		out = append(out, e.Glob(filepath.Join(sp, "nvidia", "*", "lib"))...)
		out = append(out, e.Glob(filepath.Join(sp, "nvidia", "*", "*", "lib"))...)
	}
	return out
}

// planSearch lists the places to look, in order.
func planSearch(e searchEnv) searchPlan {
	var p searchPlan
	seen := map[string]bool{}
	add := func(dir string) {
		dir = filepath.Clean(dir)
		if !seen[dir] {
			seen[dir] = true
			p.steps = append(p.steps, searchStep{dir: dir})
		}
	}
	where := []string{envDesc(envLibDir, e.LibDir)}
	for _, d := range splitPath(e.LibDir) {
		add(d)
	}
	where = append(where, envDesc("LD_LIBRARY_PATH", e.LDPath))
	for _, d := range splitPath(e.LDPath) {
		add(d)
	}
	p.steps = append(p.steps, searchStep{system: true})
	where = append(where, "the system loader")
	for _, d := range fixedLibDirs {
		add(d)
		where = append(where, d)
	}
	wheels := wheelLibDirs(e)
	for _, d := range wheels {
		add(d)
	}
	if len(wheels) == 0 {
		where = append(where, "the nvidia-* Python wheels (none found)")
	} else {
		where = append(where, "the nvidia-* Python wheels ("+strings.Join(wheels, ", ")+")")
	}
	if e.CondaPrefix != "" {
		lib := filepath.Join(e.CondaPrefix, "lib")
		add(lib)
		where = append(where, "the conda environment's lib ("+lib+")")
	}
	p.where = strings.Join(where, ", ")
	return p
}

// first returns p with dir searched before everything else.
func (p searchPlan) first(dir string) searchPlan {
	q := searchPlan{where: dir + ", " + p.where, steps: []searchStep{{dir: dir}}}
	for _, s := range p.steps {
		if s.system || s.dir != dir {
			q.steps = append(q.steps, s)
		}
	}
	return q
}

// library is a loaded shared library.
type library struct {
	name   string // the role's name, e.g. "cuBLASLt"
	soname string // the name that matched, e.g. "libcublasLt.so.12"
	path   string // the file (for the system loader: as /proc/self/maps shows it)
	handle uintptr
}

// dir is the folder the library was loaded from.
func (l *library) dir() string { return filepath.Dir(l.path) }

// major is the soname's version ("12" for libcublasLt.so.12).
func (l *library) major() string { return l.soname[strings.LastIndex(l.soname, ".so.")+len(".so."):] }

// sym returns the address of a function of the library.
func (l *library) sym(name string) (uintptr, error) {
	p, err := purego.Dlsym(l.handle, name)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%w: %s (%s) has no function %s", ErrLibrary, l.name, l.path, name)
	}
	return p, nil
}

// bind resolves the named functions into the given fields.
func (l *library) bind(syms []symbol) error {
	for _, s := range syms {
		p, err := l.sym(s.name)
		if err != nil {
			if s.optional {
				continue
			}
			return err
		}
		*s.addr = p
	}
	return nil
}

// symbol is one function to resolve; optional ones stay 0 when missing.
type symbol struct {
	addr     *uintptr
	name     string
	optional bool
}

// loader finds and opens libraries; the fields are the outside world.
type loader struct {
	exists func(path string) bool
	open   func(path string) (uintptr, error)
}

// libError is a library that was not found; its message says what was
// looked for and where.
type libError struct {
	msg  string
	kind error
}

func (e *libError) Error() string { return e.msg }
func (e *libError) Unwrap() error { return e.kind }

// locate opens the first candidate of r along p.
func (ld loader) locate(r libRole, p searchPlan) (*library, error) {
	var failed []string
	for _, s := range p.steps {
		for _, so := range r.sonames {
			path := so
			if !s.system {
				path = filepath.Join(s.dir, so)
				if !ld.exists(path) {
					continue
				}
			}
			h, err := ld.open(path)
			if err != nil {
				msg := err.Error()
				// A bare soname the system loader does not know is the
				// normal miss; anything else (a missing dependency, a
				// wrong architecture) is worth reporting.
				if !(s.system && strings.HasPrefix(msg, so+": cannot open shared object file")) {
					failed = append(failed, msg)
				}
				continue
			}
			return &library{name: r.name, soname: so, path: path, handle: h}, nil
		}
	}
	return nil, notFound(r, p, failed)
}

// notFound is the error for a library that no step had.
func notFound(r libRole, p searchPlan, failed []string) error {
	var b strings.Builder
	if r.kind == ErrNoDevice {
		fmt.Fprintf(&b, "no NVIDIA driver: %s not found (looked in %s)", strings.Join(r.sonames, " or "), p.where)
	} else {
		fmt.Fprintf(&b, "cuda: %s (%s) not found in %s", r.name, strings.Join(r.sonames, " or "), p.where)
	}
	if len(failed) > 0 {
		b.WriteString("; found but could not load: " + strings.Join(failed, "; "))
	}
	if r.hint != "" {
		b.WriteString(": " + r.hint)
	}
	return &libError{msg: b.String(), kind: r.kind}
}

// hostLoader looks at the real file system and opens with dlopen.
func hostLoader() loader {
	return loader{
		exists: func(path string) bool {
			st, err := os.Stat(path)
			return err == nil && !st.IsDir()
		},
		open: func(path string) (uintptr, error) {
			h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if err != nil {
				return 0, err
			}
			return h, nil
		},
	}
}

// loadedPath returns the file of a loaded library of soname's family
// (libcuda.so.1 -> libcuda.so.*), from /proc/self/maps ("" when it is
// not there).
func loadedPath(soname string) string {
	stem := soname
	if i := strings.LastIndex(soname, ".so."); i >= 0 {
		stem = soname[:i+len(".so.")]
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		i := strings.IndexByte(line, '/')
		if i < 0 {
			continue
		}
		path := line[i:]
		if strings.HasPrefix(filepath.Base(path), stem) {
			return path
		}
	}
	return ""
}

// The libraries are loaded once per process and never unloaded.
var libs struct {
	mu      sync.Mutex
	driver  *driverAPI
	lt      *ltAPI
	blas    *blasAPI
	nccl    *library
	ncclAPI *ncclAPI
}

// find locates r with the host loader (the system loader's pick is
// reported with its real path).
func find(r libRole, p searchPlan) (*library, error) {
	l, err := hostLoader().locate(r, p)
	if err != nil {
		return nil, err
	}
	if !strings.ContainsRune(l.path, '/') {
		if real := loadedPath(l.soname); real != "" {
			l.path = real
		}
	}
	return l, nil
}

// loadDriver loads and binds libcuda.so.1.
func loadDriver() (*driverAPI, error) {
	libs.mu.Lock()
	defer libs.mu.Unlock()
	if libs.driver != nil {
		return libs.driver, nil
	}
	l, err := find(roleDriver, planSearch(hostSearchEnv()))
	if err != nil {
		return nil, err
	}
	d, err := bindDriver(l)
	if err != nil {
		return nil, err
	}
	libs.driver = d
	return d, nil
}

// loadLt loads and binds cuBLASLt.
func loadLt() (*ltAPI, error) {
	libs.mu.Lock()
	defer libs.mu.Unlock()
	if libs.lt != nil {
		return libs.lt, nil
	}
	l, err := find(roleLt, planSearch(hostSearchEnv()))
	if err != nil {
		return nil, err
	}
	lt, err := bindLt(l)
	if err != nil {
		return nil, err
	}
	libs.lt = lt
	return lt, nil
}

// blasRole is cuBLAS restricted to the major version of the loaded cuBLASLt.
func blasRole(lt *library) libRole {
	r := roleBLAS
	r.sonames = []string{"libcublas.so." + lt.major()}
	return r
}

// loadBLAS loads and binds cuBLAS (after cuBLASLt, which it needs).
func loadBLAS(lt *library) (*blasAPI, error) {
	libs.mu.Lock()
	defer libs.mu.Unlock()
	if libs.blas != nil {
		return libs.blas, nil
	}
	p := planSearch(hostSearchEnv())
	if strings.ContainsRune(lt.path, '/') {
		p = p.first(lt.dir())
	}
	l, err := find(blasRole(lt), p)
	if err != nil {
		return nil, err
	}
	b, err := bindBLAS(l)
	if err != nil {
		return nil, err
	}
	libs.blas = b
	return b, nil
}

// findNCCL loads libnccl.so.2 (loadNCCL binds it).
func findNCCL() (*library, error) {
	libs.mu.Lock()
	defer libs.mu.Unlock()
	if libs.nccl != nil {
		return libs.nccl, nil
	}
	l, err := find(roleNCCL, planSearch(hostSearchEnv()))
	if err != nil {
		return nil, err
	}
	libs.nccl = l
	return l, nil
}
