package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Etcd is a Registry on etcd: one key per worker under a prefix, bound to
// a lease per registration.
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger

	mu     sync.Mutex
	regs   map[*etcdRegistration]struct{}
	closed bool

	renewals atomic.Uint64
}

var _ Registry = (*Etcd)(nil)

// Renewals counts the keep-alive renewals of every registration's lease.
func (e *Etcd) Renewals() uint64 { return e.renewals.Load() }

// NewEtcd returns a registry using cli under prefix (DefaultPrefix if
// empty; a trailing "/" is added). The caller owns cli and closes it after
// Close.
func NewEtcd(cli *clientv3.Client, prefix string, log *slog.Logger) *Etcd {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if log == nil {
		log = slog.Default()
	}
	return &Etcd{cli: cli, prefix: prefix, log: log, regs: map[*etcdRegistration]struct{}{}}
}

func (e *Etcd) key(id string) string { return e.prefix + id }

// Register implements Registry.
func (e *Etcd) Register(ctx context.Context, info WorkerInfo, ttl time.Duration) (Registration, error) {
	if err := info.Validate(); err != nil {
		return nil, err
	}
	val, err := encode(info)
	if err != nil {
		return nil, fmt.Errorf("membership: encode %s: %w", info.ID, err)
	}
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	lease, err := e.cli.Grant(ctx, ttlSeconds(ttl))
	if err != nil {
		return nil, fmt.Errorf("membership: grant lease for %s: %w", info.ID, err)
	}
	// only if no live registration holds the id (a key with a lease
	// disappears with it)
	key := e.key(info.ID)
	resp, err := e.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease.ID))).
		Else(clientv3.OpGet(key)).Commit()
	if err == nil && !resp.Succeeded {
		err = errors.New("taken")
		if rs := resp.Responses; len(rs) == 1 && len(rs[0].GetResponseRange().Kvs) == 1 {
			kv := rs[0].GetResponseRange().Kvs[0]
			if kv.Lease == 0 {
				// no lease will ever end it: say how to
				err = fmt.Errorf("%w: %s is held by a key without a lease (written by hand?), which never expires: remove it with etcdctl del %s", ErrTaken, info.ID, key)
			} else if held, derr := decode(kv.Value); derr == nil {
				err = takenError(held)
			}
		}
		if !errors.Is(err, ErrTaken) {
			err = fmt.Errorf("%w: %s is registered by another live worker", ErrTaken, info.ID)
		}
	}
	if err != nil {
		e.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		if errors.Is(err, ErrTaken) {
			return nil, err
		}
		return nil, fmt.Errorf("membership: register %s: %w", info.ID, err)
	}
	kctx, cancel := context.WithCancel(ctx)
	ka, err := e.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		cancel()
		e.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		return nil, fmt.Errorf("membership: keep lease of %s alive: %w", info.ID, err)
	}
	r := &etcdRegistration{e: e, id: info.ID, lease: lease.ID, cancel: cancel, lost: make(chan struct{})}
	go func() {
		for range ka { // each response is a renewal
			e.renewals.Add(1)
		}
		if kctx.Err() == nil {
			e.log.Warn("worker lease lost", "worker-id", info.ID, "lease", int64(lease.ID))
		}
		r.lose()
	}()
	go r.watchKey(kctx, resp.Header.Revision)
	e.mu.Lock()
	e.regs[r] = struct{}{}
	e.mu.Unlock()
	return r, nil
}

type etcdRegistration struct {
	e        *Etcd
	id       string
	lease    clientv3.LeaseID
	cancel   context.CancelFunc
	lost     chan struct{}
	once     sync.Once
	lostOnce sync.Once
}

// lose reports the registration lost and stops keeping its lease alive.
func (r *etcdRegistration) lose() {
	r.lostOnce.Do(func() {
		r.cancel()
		close(r.lost)
	})
}

// watchKey reports the registration lost when its key is deleted, or
// taken by another lease, by someone else (an operator's etcdctl del, a
// tool clearing the prefix) while the lease lives: the coordinator sees
// the worker leave, so the worker must register again rather than go on
// renewing a lease that holds nothing. rev is the revision of the
// registration's put; it ends with ctx.
func (r *etcdRegistration) watchKey(ctx context.Context, rev int64) {
	key := r.e.key(r.id)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := r.e.cli.Watch(wctx, key, clientv3.WithRev(rev+1))
		lost := false
		for resp := range wch {
			if resp.CompactRevision != 0 {
				break // the history since rev is gone: read the key below
			}
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete || clientv3.LeaseID(ev.Kv.Lease) != r.lease {
					lost = true
					break
				}
				rev = ev.Kv.ModRevision
			}
			if lost {
				break
			}
		}
		cancel() // this watch's stream, whatever ended the loop
		if lost {
			r.gone(ctx, "deleted or taken")
			return
		}
		if ctx.Err() != nil {
			return
		}
		// The watch ended (compaction, no leader, a closed stream): what
		// the key holds now decides, then watch from there.
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		g, err := r.e.cli.Get(gctx, key)
		cancel()
		switch {
		case err != nil:
			select { // the keep-alives say whether etcd is lost
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		case len(g.Kvs) == 0 || clientv3.LeaseID(g.Kvs[0].Lease) != r.lease:
			r.gone(ctx, "not there")
			return
		default:
			rev = g.Header.Revision
		}
	}
}

// gone reports the registration lost because its key was changed by
// someone else; nothing when the registration is closing.
func (r *etcdRegistration) gone(ctx context.Context, why string) {
	if ctx.Err() != nil {
		return
	}
	r.e.log.Warn("worker registration key "+why+" (etcdctl del, or the lease expired): registration lost", "worker-id", r.id, "lease", int64(r.lease))
	r.lose()
}

func (r *etcdRegistration) Update(ctx context.Context, info WorkerInfo) error {
	if info.ID != r.id {
		return fmt.Errorf("%w: update of %s cannot change the id to %s", ErrInvalidWorker, r.id, info.ID)
	}
	if err := info.Validate(); err != nil {
		return err
	}
	select {
	case <-r.lost:
		return fmt.Errorf("%w: %s", ErrLeaseLost, r.id)
	default:
	}
	val, err := encode(info)
	if err != nil {
		return fmt.Errorf("membership: encode %s: %w", info.ID, err)
	}
	if _, err := r.e.cli.Put(ctx, r.e.key(r.id), string(val), clientv3.WithLease(r.lease)); err != nil {
		return fmt.Errorf("membership: update %s: %w", r.id, err)
	}
	return nil
}

func (r *etcdRegistration) Lost() <-chan struct{} { return r.lost }

func (r *etcdRegistration) Close(ctx context.Context) error {
	var err error
	r.once.Do(func() {
		r.cancel()
		r.e.mu.Lock()
		delete(r.e.regs, r)
		r.e.mu.Unlock()
		if _, rerr := r.e.cli.Revoke(ctx, r.lease); rerr != nil {
			err = fmt.Errorf("membership: deregister %s: %w", r.id, rerr)
		}
	})
	return err
}

// List implements Registry.
func (e *Etcd) List(ctx context.Context) ([]WorkerInfo, error) {
	ws, _, err := e.list(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]WorkerInfo, 0, len(ws))
	for _, w := range ws {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// list returns the live workers by key and the revision they were read at.
func (e *Etcd) list(ctx context.Context) (map[string]WorkerInfo, int64, error) {
	resp, err := e.cli.Get(ctx, e.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("membership: list workers: %w", err)
	}
	out := make(map[string]WorkerInfo, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		w, err := decode(kv.Value)
		if err != nil {
			e.log.Warn("skipping malformed worker entry", "key", string(kv.Key), "error", err)
			continue
		}
		out[string(kv.Key)] = w
	}
	return out, resp.Header.Revision, nil
}

// Watch implements Registry. If the etcd watch breaks (compaction,
// connection loss), it lists the prefix again and sends the difference
// (joins, updates, leaves) before watching on.
func (e *Etcd) Watch(ctx context.Context) (<-chan Event, error) {
	known, rev, err := e.list(ctx)
	if err != nil {
		return nil, err
	}
	out := make(chan Event, 16)
	go func() {
		defer close(out)
		send := func(ev Event) bool {
			select {
			case out <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for _, w := range sortedWorkers(known) {
			if !send(Event{Join, w}) {
				return
			}
		}
		for ctx.Err() == nil {
			rev = e.watchFrom(ctx, known, rev, send)
			if ctx.Err() != nil {
				return
			}
			// Resynchronise from a fresh list.
			var now map[string]WorkerInfo
			for {
				now, rev, err = e.list(ctx)
				if err == nil {
					break
				}
				e.log.Warn("membership watch: relist failed", "error", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(500 * time.Millisecond):
				}
			}
			for _, ev := range diff(known, now) {
				if !send(ev) {
					return
				}
			}
			known = now
		}
	}()
	return out, nil
}

// watchFrom follows changes after rev, updating known, until the watch
// breaks; it returns the last revision seen.
func (e *Etcd) watchFrom(ctx context.Context, known map[string]WorkerInfo, rev int64, send func(Event) bool) int64 {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range e.cli.Watch(wctx, e.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV()) {
		if err := resp.Err(); err != nil {
			e.log.Warn("membership watch broken", "error", err)
			return rev
		}
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			rev = ev.Kv.ModRevision
			switch ev.Type {
			case clientv3.EventTypePut:
				w, err := decode(ev.Kv.Value)
				if err != nil {
					e.log.Warn("skipping malformed worker entry", "key", key, "error", err)
					continue
				}
				typ := Join
				if _, ok := known[key]; ok {
					typ = Update
				}
				known[key] = w
				if !send(Event{typ, w}) {
					return rev
				}
			case clientv3.EventTypeDelete:
				w, ok := known[key]
				if !ok {
					continue
				}
				delete(known, key)
				if !send(Event{Leave, w}) {
					return rev
				}
			}
		}
		if resp.Header.Revision > rev {
			rev = resp.Header.Revision
		}
	}
	return rev
}

// Close revokes the leases of every open registration.
func (e *Etcd) Close() error {
	e.mu.Lock()
	e.closed = true
	regs := make([]*etcdRegistration, 0, len(e.regs))
	for r := range e.regs {
		regs = append(regs, r)
	}
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var first error
	for _, r := range regs {
		if err := r.Close(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func sortedWorkers(m map[string]WorkerInfo) []WorkerInfo {
	out := make([]WorkerInfo, 0, len(m))
	for _, w := range m {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// diff returns the events that turn old into now (both keyed by etcd
// key): leaves, then joins and updates, each in key order.
func diff(old, now map[string]WorkerInfo) []Event {
	var evs []Event
	for _, k := range sortedKeys(old) {
		if _, ok := now[k]; !ok {
			evs = append(evs, Event{Leave, old[k]})
		}
	}
	for _, k := range sortedKeys(now) {
		prev, ok := old[k]
		switch {
		case !ok:
			evs = append(evs, Event{Join, now[k]})
		case !sameInfo(prev, now[k]):
			evs = append(evs, Event{Update, now[k]})
		}
	}
	return evs
}

func sortedKeys(m map[string]WorkerInfo) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sameInfo(a, b WorkerInfo) bool {
	x, _ := encode(a)
	y, _ := encode(b)
	return string(x) == string(y)
}
