package membership

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// MemoryServer is the shared state of in-memory registries, playing the
// part of the etcd cluster: leases with deadlines that expire unless kept
// alive, one entry per worker ID, and watchers. Clients are Memory values.
type MemoryServer struct {
	mu       sync.Mutex
	entries  map[string]memEntry
	leases   map[int64]*memLease
	nextID   int64
	watchers map[*memWatcher]struct{}
	stop     chan struct{}
	stopOnce sync.Once
}

type memEntry struct {
	info  WorkerInfo
	lease int64
}

type memLease struct {
	ttl      time.Duration
	deadline time.Time
}

// NewMemoryServer starts the lease-expiry loop; Stop ends it.
func NewMemoryServer() *MemoryServer {
	s := &MemoryServer{
		entries:  map[string]memEntry{},
		leases:   map[int64]*memLease{},
		watchers: map[*memWatcher]struct{}{},
		stop:     make(chan struct{}),
	}
	go s.expireLoop()
	return s
}

// Stop ends the lease-expiry loop.
func (s *MemoryServer) Stop() { s.stopOnce.Do(func() { close(s.stop) }) }

func (s *MemoryServer) expireLoop() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.mu.Lock()
			for id, l := range s.leases {
				if now.After(l.deadline) {
					s.revokeLocked(id)
				}
			}
			s.mu.Unlock()
		}
	}
}

func (s *MemoryServer) grant(ttl time.Duration) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	s.leases[s.nextID] = &memLease{ttl: ttl, deadline: time.Now().Add(ttl)}
	return s.nextID
}

// keepAlive renews a lease; false when it no longer exists.
func (s *MemoryServer) keepAlive(id int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.leases[id]
	if ok {
		l.deadline = time.Now().Add(l.ttl)
	}
	return ok
}

// holds says whether lease holds the entry of worker id.
func (s *MemoryServer) holds(id string, lease int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	return ok && e.lease == lease
}

// Delete removes worker id's entry whatever lease holds it, as an
// operator's etcdctl del would, leaving the lease alive; watchers see it
// leave and its registration is reported lost at its next renewal.
func (s *MemoryServer) Delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[id]; ok {
		delete(s.entries, id)
		s.notifyLocked(Event{Leave, e.info})
	}
}

func (s *MemoryServer) alive(id int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.leases[id]
	return ok
}

func (s *MemoryServer) put(info WorkerInfo, lease int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.putLocked(info, lease)
}

func (s *MemoryServer) putLocked(info WorkerInfo, lease int64) error {
	if _, ok := s.leases[lease]; !ok {
		return fmt.Errorf("%w: %s", ErrLeaseLost, info.ID)
	}
	typ := Join
	if _, ok := s.entries[info.ID]; ok {
		typ = Update
	}
	s.entries[info.ID] = memEntry{info: info, lease: lease}
	s.notifyLocked(Event{typ, info})
	return nil
}

// create is put for a new registration: refused while another lease
// holds the id.
func (s *MemoryServer) create(info WorkerInfo, lease int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[info.ID]; ok && e.lease != lease {
		return takenError(e.info)
	}
	return s.putLocked(info, lease)
}

func (s *MemoryServer) revoke(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revokeLocked(id)
}

func (s *MemoryServer) revokeLocked(id int64) {
	delete(s.leases, id)
	var gone []string
	for wid, e := range s.entries {
		if e.lease == id {
			gone = append(gone, wid)
		}
	}
	sort.Strings(gone)
	for _, wid := range gone {
		info := s.entries[wid].info
		delete(s.entries, wid)
		s.notifyLocked(Event{Leave, info})
	}
}

func (s *MemoryServer) listLocked() []WorkerInfo {
	out := make([]WorkerInfo, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, e.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *MemoryServer) notifyLocked(ev Event) {
	for w := range s.watchers {
		w.push(ev)
	}
}

// memWatcher queues events without bound so the server never blocks on a
// slow reader.
type memWatcher struct {
	mu     sync.Mutex
	queue  []Event
	notify chan struct{}
}

func (w *memWatcher) push(ev Event) {
	w.mu.Lock()
	w.queue = append(w.queue, ev)
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *memWatcher) pop() []Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.queue
	w.queue = nil
	return q
}

// Memory is an in-process Registry client of a MemoryServer, for tests.
type Memory struct {
	srv *MemoryServer

	mu     sync.Mutex
	regs   map[*memRegistration]struct{}
	closed bool
}

var _ Registry = (*Memory)(nil)

// NewMemory returns a client of srv.
func NewMemory(srv *MemoryServer) *Memory {
	return &Memory{srv: srv, regs: map[*memRegistration]struct{}{}}
}

// Register implements Registry.
func (m *Memory) Register(ctx context.Context, info WorkerInfo, ttl time.Duration) (Registration, error) {
	if err := info.Validate(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	ttl = time.Duration(ttlSeconds(ttl)) * time.Second
	lease := m.srv.grant(ttl)
	if err := m.srv.create(info, lease); err != nil {
		m.srv.revoke(lease)
		return nil, err
	}
	kctx, cancel := context.WithCancel(ctx)
	r := &memRegistration{m: m, id: info.ID, lease: lease, cancel: cancel, lost: make(chan struct{})}
	go func() {
		defer close(r.lost)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-kctx.Done():
				return
			case <-t.C:
				// lost with the lease, and when someone else deleted
				// or took the entry while the lease lived
				if !m.srv.keepAlive(lease) || !m.srv.holds(info.ID, lease) {
					return
				}
			}
		}
	}()
	m.regs[r] = struct{}{}
	return r, nil
}

type memRegistration struct {
	m      *Memory
	id     string
	lease  int64
	cancel context.CancelFunc
	lost   chan struct{}
	once   sync.Once
}

func (r *memRegistration) Update(ctx context.Context, info WorkerInfo) error {
	if info.ID != r.id {
		return fmt.Errorf("%w: update of %s cannot change the id to %s", ErrInvalidWorker, r.id, info.ID)
	}
	if err := info.Validate(); err != nil {
		return err
	}
	return r.m.srv.put(info, r.lease)
}

func (r *memRegistration) Lost() <-chan struct{} { return r.lost }

func (r *memRegistration) Close(ctx context.Context) error {
	r.once.Do(func() {
		r.cancel()
		r.m.mu.Lock()
		delete(r.m.regs, r)
		r.m.mu.Unlock()
		r.m.srv.revoke(r.lease)
	})
	return nil
}

// List implements Registry.
func (m *Memory) List(ctx context.Context) ([]WorkerInfo, error) {
	m.srv.mu.Lock()
	defer m.srv.mu.Unlock()
	return m.srv.listLocked(), nil
}

// Watch implements Registry.
func (m *Memory) Watch(ctx context.Context) (<-chan Event, error) {
	w := &memWatcher{notify: make(chan struct{}, 1)}
	// the initial list is pending before any change can notify w (which
	// then finds the buffer full and needs not: the reader pops the
	// queue whole); a send after the watcher is registered could block
	// for good, a change having filled the buffer first
	w.notify <- struct{}{}
	m.srv.mu.Lock()
	for _, info := range m.srv.listLocked() {
		w.queue = append(w.queue, Event{Join, info})
	}
	m.srv.watchers[w] = struct{}{}
	m.srv.mu.Unlock()

	out := make(chan Event)
	go func() {
		defer close(out)
		defer func() {
			m.srv.mu.Lock()
			delete(m.srv.watchers, w)
			m.srv.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-w.notify:
			}
			for _, ev := range w.pop() {
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// Close revokes the leases of every open registration.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	regs := make([]*memRegistration, 0, len(m.regs))
	for r := range m.regs {
		regs = append(regs, r)
	}
	m.mu.Unlock()
	for _, r := range regs {
		r.Close(context.Background())
	}
	return nil
}

// Abandon stops keeping this client's leases alive without revoking them,
// as a killed worker process would: its entries leave when the leases
// expire. For tests.
func (m *Memory) Abandon() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for r := range m.regs {
		r.cancel()
		delete(m.regs, r)
	}
}
