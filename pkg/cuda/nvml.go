package cuda

import (
	"fmt"
	"sync"
	"unsafe"
)

// Bindings of NVML (libnvidia-ml.so.1, installed with the driver) for the
// step metrics' GPU utilisation and memory. Signatures and values are
// from nvml.h of CUDA 12.

var roleNVML = libRole{name: "NVML", sonames: []string{"libnvidia-ml.so.1"},
	hint: "it comes with the NVIDIA driver; set " + envLibDir + " to its folder", kind: ErrLibrary}

// nvmlReturn_t values named in errors.
var nvmlResultNames = map[int32]string{
	0: "NVML_SUCCESS", 1: "NVML_ERROR_UNINITIALIZED", 2: "NVML_ERROR_INVALID_ARGUMENT", 3: "NVML_ERROR_NOT_SUPPORTED",
	4: "NVML_ERROR_NO_PERMISSION", 6: "NVML_ERROR_NOT_FOUND", 9: "NVML_ERROR_DRIVER_NOT_LOADED", 15: "NVML_ERROR_GPU_IS_LOST",
	999: "NVML_ERROR_UNKNOWN",
}

type nvmlAPI struct {
	lib *library

	nvmlInit                      uintptr
	nvmlShutdown                  uintptr
	nvmlErrorString               uintptr
	nvmlDeviceGetHandleByUUID     uintptr
	nvmlDeviceGetUtilizationRates uintptr
	nvmlDeviceGetMemoryInfo       uintptr
}

func bindNVML(l *library) (*nvmlAPI, error) {
	n := &nvmlAPI{lib: l}
	err := l.bind([]symbol{
		// nvmlReturn_t nvmlInit_v2(void);
		{addr: &n.nvmlInit, name: "nvmlInit_v2"},
		// nvmlReturn_t nvmlShutdown(void);
		{addr: &n.nvmlShutdown, name: "nvmlShutdown"},
		// const char* nvmlErrorString(nvmlReturn_t result);
		{addr: &n.nvmlErrorString, name: "nvmlErrorString"},
		// nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device);
		{addr: &n.nvmlDeviceGetHandleByUUID, name: "nvmlDeviceGetHandleByUUID"},
		// nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization);
		// typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;  (percent over the last sample period)
		{addr: &n.nvmlDeviceGetUtilizationRates, name: "nvmlDeviceGetUtilizationRates"},
		// nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory);
		// typedef struct { unsigned long long total; unsigned long long free; unsigned long long used; } nvmlMemory_t;
		{addr: &n.nvmlDeviceGetMemoryInfo, name: "nvmlDeviceGetMemoryInfo"},
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

func (n *nvmlAPI) check(call, detail string, r uintptr) error {
	code := int32(r)
	if code == 0 {
		return nil
	}
	name, ok := nvmlResultNames[code]
	if !ok {
		name = fmt.Sprintf("nvmlReturn(%d)", code)
	}
	e := &CallError{Call: call, Detail: detail, Code: int(code), Name: name, kind: ErrLibrary}
	if p := ccall(n.nvmlErrorString, uintptr(code)); p != 0 {
		e.Text = cStringAt(p)
	}
	return e
}

// GPUSample is one reading of a GPU's activity.
type GPUSample struct {
	UUID string `json:"uuid"`
	// UtilPct is the percent of the last sample period (1/6 s to 1 s,
	// by GPU) in which a kernel ran on the GPU (any process's).
	UtilPct float64 `json:"util_pct"`
	// MemUsedBytes and MemTotalBytes are the device's memory (every
	// process's allocations, the driver's reservations included).
	MemUsedBytes  int64 `json:"mem_used_bytes"`
	MemTotalBytes int64 `json:"mem_total_bytes"`
}

// NVML reads GPU utilisation and memory. Its methods may be called from
// any goroutine.
type NVML struct {
	mu      sync.Mutex
	api     *nvmlAPI
	handles map[string]uintptr
	closed  bool
}

// OpenNVML loads NVML and initialises it; Close shuts it down.
func OpenNVML() (*NVML, error) {
	l, err := find(roleNVML, planSearch(hostSearchEnv()))
	if err != nil {
		return nil, err
	}
	api, err := bindNVML(l)
	if err != nil {
		return nil, err
	}
	return openNVML(api)
}

func openNVML(api *nvmlAPI) (*NVML, error) {
	if err := api.check("nvmlInit_v2", "", ccall(api.nvmlInit)); err != nil {
		return nil, err
	}
	return &NVML{api: api, handles: map[string]uintptr{}}, nil
}

// Sample reads the GPU with the given UUID (as Context.UUID gives it).
func (n *NVML) Sample(uuid string) (GPUSample, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := GPUSample{UUID: uuid}
	if n.closed {
		return s, fmt.Errorf("%w: NVML closed", ErrLibrary)
	}
	a := n.api
	h, ok := n.handles[uuid]
	if !ok {
		name := append([]byte(uuid), 0)
		if err := a.check("nvmlDeviceGetHandleByUUID", uuid, ccall(a.nvmlDeviceGetHandleByUUID, uintptr(unsafe.Pointer(&name[0])), uintptr(unsafe.Pointer(&h)))); err != nil {
			return s, err
		}
		n.handles[uuid] = h
	}
	var util [2]uint32
	if err := a.check("nvmlDeviceGetUtilizationRates", uuid, ccall(a.nvmlDeviceGetUtilizationRates, h, uintptr(unsafe.Pointer(&util[0])))); err != nil {
		return s, err
	}
	var mem [3]uint64
	if err := a.check("nvmlDeviceGetMemoryInfo", uuid, ccall(a.nvmlDeviceGetMemoryInfo, h, uintptr(unsafe.Pointer(&mem[0])))); err != nil {
		return s, err
	}
	s.UtilPct = float64(util[0])
	s.MemTotalBytes, s.MemUsedBytes = int64(mem[0]), int64(mem[2])
	return s, nil
}

// Close shuts NVML down (once).
func (n *NVML) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	return n.api.check("nvmlShutdown", "", ccall(n.api.nvmlShutdown))
}
