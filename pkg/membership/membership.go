package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// DefaultPrefix is the etcd key prefix under which workers register.
const DefaultPrefix = "/switchyard/workers/"

var (
	// ErrInvalidWorker: the worker info is incomplete.
	ErrInvalidWorker = errors.New("membership: invalid worker info")
	// ErrClosed: the registry or registration was closed.
	ErrClosed = errors.New("membership: closed")
	// ErrLeaseLost: the registration's lease expired or was revoked.
	ErrLeaseLost = errors.New("membership: lease lost")
	// ErrTaken: another live registration holds the worker id.
	ErrTaken = errors.New("membership: worker id taken")
)

// takenError says which registration holds id: two workers of one id would
// both run its ranks (and the second's exit would unregister the first).
func takenError(held WorkerInfo) error {
	return fmt.Errorf("%w: %s is registered by a live worker at %s (host %s); worker ids must be unique (if that was this worker before a restart, its lease runs out within its lease_ttl_seconds)",
		ErrTaken, held.ID, held.Address, held.Host)
}

// Resources are what a worker offers.
type Resources struct {
	CPUCores    int   `json:"cpu_cores"`
	MemoryBytes int64 `json:"memory_bytes"`
	GPUs        int   `json:"gpus"`
}

// WorkerInfo is what a worker registers about itself.
type WorkerInfo struct {
	// ID is unique in the cluster (e.g. the host name plus an index).
	ID string `json:"id"`
	// Address is where peers and the coordinator reach it (host:port).
	Address   string            `json:"address"`
	Resources Resources         `json:"resources"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Host is the machine it runs on (tensor-parallel groups stay on one
	// host); "" : the worker is its own host.
	Host string `json:"host,omitempty"`
	// Version of the worker binary, for `cluster status`.
	Version string `json:"version,omitempty"`
	// Slots is how many ranks it runs at once, each with 1/Slots of its
	// resources and the data-plane port Address's + slot (0 reads as 1).
	Slots int `json:"slots,omitempty"`
	// GPUDevices are the GPUs it detected, in slot order (empty when
	// declared by count).
	GPUDevices []GPU `json:"gpu_devices,omitempty"`
	// Draining: the worker is shutting down; nothing new is placed on it.
	Draining bool `json:"draining,omitempty"`
	// Commands: the worker runs jobs with runtime: command (its config's
	// allow_commands); the scheduler places command jobs only there.
	Commands bool `json:"commands,omitempty"`
	// RankUser is the OS user its ranks run as (its config's rank_user;
	// "": the worker's own).
	RankUser string `json:"rank_user,omitempty"`
	// Roots are the directories jobs may read or write on it (its
	// storage_path, then its allowed_paths); the scheduler places a job
	// whose corpus or checkpoint path lies elsewhere on other workers.
	// Empty: it does not say (an older worker).
	Roots []string `json:"roots,omitempty"`
}

// GPU is one detected device.
type GPU struct {
	Index     int    `json:"index"`
	UUID      string `json:"uuid,omitempty"`
	Name      string `json:"name"`
	MemoryMiB int64  `json:"memory_mib"`
	// Links: how it reaches the worker's other GPUs, by their index
	// ("NV18", "PIX", "SYS", ...: nvidia-smi topo -m); empty: not read.
	Links map[int]string `json:"links,omitempty"`
}

// SlotCount is Slots, at least 1.
func (w WorkerInfo) SlotCount() int { return max(w.Slots, 1) }

// SlotAddress is slot k's data-plane address given a worker's listen or
// advertised address: its port + k (an address without a fixed port is
// returned as it is).
func SlotAddress(addr string, k int) string {
	if k == 0 {
		return addr
	}
	host, p, err := net.SplitHostPort(addr)
	port, perr := strconv.Atoi(p)
	if err != nil || perr != nil || port == 0 {
		return addr
	}
	return net.JoinHostPort(host, strconv.Itoa(port+k))
}

// Validate checks the fields every registration needs.
func (w WorkerInfo) Validate() error {
	switch {
	case w.ID == "":
		return fmt.Errorf("%w: id: required", ErrInvalidWorker)
	case w.Address == "":
		return fmt.Errorf("%w: %s: address: required", ErrInvalidWorker, w.ID)
	case w.Resources.CPUCores < 0 || w.Resources.MemoryBytes < 0 || w.Resources.GPUs < 0:
		return fmt.Errorf("%w: %s: resources: must not be negative", ErrInvalidWorker, w.ID)
	case w.Slots < 0 || w.Slots > 1024:
		return fmt.Errorf("%w: %s: slots %d: must be in [0, 1024]", ErrInvalidWorker, w.ID, w.Slots)
	}
	for i := 0; i < len(w.ID); i++ {
		if c := w.ID[i]; c == '/' || c < ' ' || c == 0x7f {
			return fmt.Errorf("%w: id %q: no '/' or control characters", ErrInvalidWorker, w.ID)
		}
	}
	return nil
}

func encode(w WorkerInfo) ([]byte, error) { return json.Marshal(w) }

func decode(b []byte) (WorkerInfo, error) {
	var w WorkerInfo
	err := json.Unmarshal(b, &w)
	return w, err
}

// EventType says what happened to a worker.
type EventType int

const (
	// Join: a worker registered (or was present when the watch started).
	Join EventType = iota + 1
	// Update: a registered worker changed its info.
	Update
	// Leave: a worker deregistered or its lease expired.
	Leave
)

func (t EventType) String() string {
	switch t {
	case Join:
		return "join"
	case Update:
		return "update"
	case Leave:
		return "leave"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change of membership. For Leave, Worker is the last info
// the worker registered.
type Event struct {
	Type   EventType
	Worker WorkerInfo
}

// Registry is the membership boundary between workers and the coordinator.
type Registry interface {
	// Register publishes info under a lease of ttl (rounded up to whole
	// seconds, at least 1s) and keeps the lease alive until the registration
	// is closed or ctx ends. Registering an ID that is already live replaces
	// its info (the previous lease keeps running until it ends).
	Register(ctx context.Context, info WorkerInfo, ttl time.Duration) (Registration, error)
	// List returns the live workers sorted by ID.
	List(ctx context.Context) ([]WorkerInfo, error)
	// Watch first sends a Join for every live worker, then every change, in
	// order, until ctx ends; then it closes the channel. A slow reader
	// delays the watch but loses no events.
	Watch(ctx context.Context) (<-chan Event, error)
	// Close stops the registry's background work and revokes the leases of
	// its open registrations.
	Close() error
}

// Registration is one worker's live entry.
type Registration interface {
	// Update replaces the registered info (same ID) under the same lease.
	Update(ctx context.Context, info WorkerInfo) error
	// Lost is closed when the lease can no longer be kept alive (expired,
	// revoked, or the registry closed).
	Lost() <-chan struct{}
	// Close deregisters: it revokes the lease so watchers see Leave at once.
	Close(ctx context.Context) error
}

func ttlSeconds(ttl time.Duration) int64 {
	s := int64((ttl + time.Second - 1) / time.Second)
	return max(s, 1)
}
