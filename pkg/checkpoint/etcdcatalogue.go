package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdCatalogue is a Catalogue kept in etcd, safe for any number of
// processes. Under prefix P it keeps, per job J:
//
//	P/J/<step, 20 digits zero-padded>  {"state":"live"|"deleting","manifest":{...}}
//	P/J/max-step                       the greatest step of J's entries, 20 digits
//	P/J/fence                          the newest attempt of J (Fence), 20 digits
//
// Every change is one etcd transaction. The max-step key is present exactly
// when the job has an entry and then holds the greatest entry step, live or
// deleting: Commit writes both keys only if max-step is absent or smaller
// than the new step, so of concurrent commits of the same or older steps
// one at most succeeds and the rest get ErrStale. Remove of the greatest
// entry lowers (or deletes) max-step in the same transaction that deletes
// the entry. Reads are single linearizable range reads. The writes of a
// catalogue returned by As(attempt) are each wrapped in a transaction that
// requires the fence absent or not above attempt (see Fencing). The fence
// key outlives the job's entries: a job deleted keeps it, so that a late
// write of its attempts stays refused (one small key per job ever
// placed).
//
// An entry is one etcd value, so a manifest must fit etcd's request size
// limit (1.5 MiB by default), well under MaxManifestSize.
type EtcdCatalogue struct {
	cli    *clientv3.Client
	prefix string
	// as is the attempt this view writes as (As); -1: unfenced
	as int64
}

var _ Fencing = (*EtcdCatalogue)(nil)

// CataloguePrefix is where the cluster's etcd catalogue keeps manifests
// (the trainers write there, the coordinator reads and deletes).
const CataloguePrefix = "/switchyard/checkpoints"

// NewEtcdCatalogue returns a catalogue kept under prefix (e.g.
// "/switchyard/checkpoints"; a trailing slash is ignored) in cli's etcd.
// The caller owns cli.
func NewEtcdCatalogue(cli *clientv3.Client, prefix string) *EtcdCatalogue {
	return &EtcdCatalogue{cli: cli, prefix: strings.TrimRight(prefix, "/"), as: -1}
}

// As implements Fencing: the same catalogue, writing as attempt.
func (c *EtcdCatalogue) As(attempt int64) Catalogue {
	return &EtcdCatalogue{cli: c.cli, prefix: c.prefix, as: max(attempt, 0)}
}

// Fence implements Fencing in one transaction:
//
//	if fence absent or fence < attempt: put fence
//	else: get fence (ErrFenced when above attempt)
func (c *EtcdCatalogue) Fence(ctx context.Context, job string, attempt int64) error {
	if err := checkJob(job); err != nil {
		return err
	}
	if attempt < 0 {
		return fmt.Errorf("checkpoint: fence %s: attempt %d: attempts are >= 0", job, attempt)
	}
	ctx, cancel := context.WithTimeout(ctx, etcdCommitTimeout)
	defer cancel()
	key, val := c.fenceKey(job), formatEtcdStep(attempt)
	resp, err := c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, val)).
		Else(clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "<", val)},
			[]clientv3.Op{clientv3.OpPut(key, val)},
			[]clientv3.Op{clientv3.OpGet(key)},
		)).
		Commit()
	if err != nil {
		return fmt.Errorf("checkpoint: etcd catalogue fence %s at attempt %d: %w", job, attempt, err)
	}
	if resp.Succeeded {
		return nil
	}
	inner := resp.Responses[0].GetResponseTxn()
	if inner == nil {
		return fmt.Errorf("checkpoint: etcd catalogue fence %s: malformed transaction response", job)
	}
	if inner.Succeeded {
		return nil
	}
	if held := heldStep(inner.Responses[0]); held != val {
		return fmt.Errorf("%w: job %s is fenced at attempt %s, above %d", ErrFenced, job, trimStep(held), attempt)
	}
	return nil
}

func (c *EtcdCatalogue) fenceKey(job string) string { return c.jobPrefix(job) + etcdFenceKey }

// write runs op, a transaction (clientv3.OpTxn), as this view's attempt:
// for an unfenced view, alone; else inside a transaction that runs it only
// if the job's fence is absent or not above the attempt, and otherwise
// answers ErrFenced. It returns op's own response.
func (c *EtcdCatalogue) write(ctx context.Context, job string, op clientv3.Op) (*etcdserverpb.TxnResponse, error) {
	txn := c.cli.Txn(ctx)
	var orElse []clientv3.Op
	if c.as >= 0 {
		key := c.fenceKey(job)
		txn = txn.If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		orElse = []clientv3.Op{clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "<", formatEtcdStep(c.as+1))},
			[]clientv3.Op{op},
			[]clientv3.Op{clientv3.OpGet(key)},
		)}
	}
	resp, err := txn.Then(op).Else(orElse...).Commit()
	if err != nil {
		return nil, err
	}
	r := resp.Responses[0]
	if !resp.Succeeded {
		fenced := r.GetResponseTxn()
		if fenced == nil {
			return nil, fmt.Errorf("checkpoint: etcd catalogue %s: malformed transaction response", job)
		}
		if !fenced.Succeeded {
			return nil, fmt.Errorf("%w: job %s is fenced at attempt %s, this write is attempt %d's", ErrFenced, job, trimStep(heldStep(fenced.Responses[0])), c.as)
		}
		r = fenced.Responses[0]
	}
	tr := r.GetResponseTxn()
	if tr == nil {
		return nil, fmt.Errorf("checkpoint: etcd catalogue %s: malformed transaction response", job)
	}
	return tr, nil
}

// heldStep is the value a range response read (a 20-digit step or
// attempt), "?" when it read none.
func heldStep(r *etcdserverpb.ResponseOp) string {
	if rr := r.GetResponseRange(); rr != nil && len(rr.Kvs) == 1 {
		return string(rr.Kvs[0].Value)
	}
	return "?"
}

// trimStep is a 20-digit step without its leading zeros.
func trimStep(s string) string {
	if t := strings.TrimLeft(s, "0"); t != "" {
		return t
	}
	return "0"
}

const (
	etcdStateLive     = "live"
	etcdStateDeleting = "deleting"
	etcdMaxStepKey    = "max-step"
	etcdFenceKey      = "fence"
	// etcdMaxAttempts bounds the read-compare-retry loops of MarkDeleting
	// and Remove, which retry only when another writer changed the keys
	// they read in between.
	etcdMaxAttempts = 100
)

type etcdEntry struct {
	State    string          `json:"state"`
	Manifest json.RawMessage `json:"manifest"`
}

func (c *EtcdCatalogue) jobPrefix(job string) string { return c.prefix + "/" + job + "/" }

func (c *EtcdCatalogue) stepKey(job string, step int64) string {
	return c.jobPrefix(job) + formatEtcdStep(step)
}

func (c *EtcdCatalogue) maxStepKey(job string) string { return c.jobPrefix(job) + etcdMaxStepKey }

// stepRange is the key range [start, end) of a job's step keys: digits only,
// so max-step is outside it (':' follows '9').
func (c *EtcdCatalogue) stepRange(job string) (start, end string) {
	return c.jobPrefix(job) + "0", c.jobPrefix(job) + ":"
}

func formatEtcdStep(step int64) string { return fmt.Sprintf("%020d", step) }

func checkJob(job string) error {
	if err := ValidateJob(job); err != nil {
		return fmt.Errorf("checkpoint: etcd catalogue: %w", err)
	}
	return nil
}

func encodeEtcdEntry(m Manifest, state string) (string, error) {
	mb, err := EncodeManifest(m)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(etcdEntry{State: state, Manifest: mb})
	if err != nil {
		return "", fmt.Errorf("checkpoint: etcd catalogue: %w", err)
	}
	return string(b), nil
}

// decodeEntry parses the value of job's step key and checks it names that
// checkpoint.
func decodeEtcdEntry(job string, step int64, v []byte) (Manifest, bool, error) {
	var e etcdEntry
	if err := json.Unmarshal(v, &e); err != nil {
		return Manifest{}, false, fmt.Errorf("checkpoint: etcd catalogue %s step %d: %w", job, step, err)
	}
	if e.State != etcdStateLive && e.State != etcdStateDeleting {
		return Manifest{}, false, fmt.Errorf("checkpoint: etcd catalogue %s step %d: bad state %q", job, step, e.State)
	}
	m, err := DecodeManifest(e.Manifest)
	if err != nil {
		return Manifest{}, false, fmt.Errorf("checkpoint: etcd catalogue %s step %d: %w", job, step, err)
	}
	if m.Job != job || m.Step != step {
		return Manifest{}, false, fmt.Errorf("checkpoint: etcd catalogue %s step %d: entry holds the manifest of %s step %d", job, step, m.Job, m.Step)
	}
	return m, e.State == etcdStateDeleting, nil
}

// parseEtcdStepKey returns the step of a key in stepRange(job).
func (c *EtcdCatalogue) parseStepKey(job string, key []byte) (int64, error) {
	s := strings.TrimPrefix(string(key), c.jobPrefix(job))
	step, err := strconv.ParseInt(s, 10, 64)
	if err != nil || len(s) != 20 || step < 0 {
		return 0, fmt.Errorf("checkpoint: etcd catalogue %s: unexpected key %q", job, key)
	}
	return step, nil
}

// etcdCommitTimeout bounds one commit transaction. etcd's client waits for
// a connection for as long as its context allows: without a bound, a
// commit begun while etcd is down would never fail, and its caller would
// never retry it (CommitRetrying) nor give up.
var etcdCommitTimeout = 15 * time.Second

// Commit implements Catalogue in one transaction:
//
//	if max-step absent: put entry, put max-step
//	else if max-step < step: put entry, put max-step
//	else: get max-step (ErrStale)
func (c *EtcdCatalogue) Commit(ctx context.Context, m Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	val, err := encodeEtcdEntry(m, etcdStateLive)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, etcdCommitTimeout)
	defer cancel()
	maxKey, step := c.maxStepKey(m.Job), formatEtcdStep(m.Step)
	puts := []clientv3.Op{clientv3.OpPut(c.stepKey(m.Job, m.Step), val), clientv3.OpPut(maxKey, step)}
	resp, err := c.write(ctx, m.Job, clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(maxKey), "=", 0)},
		puts,
		[]clientv3.Op{clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(maxKey), "<", step)},
			puts,
			[]clientv3.Op{clientv3.OpGet(maxKey)},
		)},
	))
	if err != nil {
		return fmt.Errorf("checkpoint: etcd catalogue commit %s step %d: %w", m.Job, m.Step, err)
	}
	if resp.Succeeded {
		return nil
	}
	inner := resp.Responses[0].GetResponseTxn()
	if inner == nil {
		return fmt.Errorf("checkpoint: etcd catalogue commit %s step %d: malformed transaction response", m.Job, m.Step)
	}
	if inner.Succeeded {
		return nil
	}
	held := heldStep(inner.Responses[0])
	if held != "?" {
		held = trimStep(held)
	}
	return fmt.Errorf("%w: job %s step %d, catalogue holds step %s", ErrStale, m.Job, m.Step, held)
}

// entries returns the job's entries in one read, ordered by step (newest
// first if desc).
func (c *EtcdCatalogue) entries(ctx context.Context, job string, desc bool) (ms []Manifest, deleting []bool, err error) {
	if err := checkJob(job); err != nil {
		return nil, nil, err
	}
	start, end := c.stepRange(job)
	order := clientv3.SortAscend
	if desc {
		order = clientv3.SortDescend
	}
	resp, err := c.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithSort(clientv3.SortByKey, order))
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint: etcd catalogue %s: %w", job, err)
	}
	for _, kv := range resp.Kvs {
		step, err := c.parseStepKey(job, kv.Key)
		if err != nil {
			return nil, nil, err
		}
		m, del, err := decodeEtcdEntry(job, step, kv.Value)
		if err != nil {
			return nil, nil, err
		}
		ms = append(ms, m)
		deleting = append(deleting, del)
	}
	return ms, deleting, nil
}

// Latest implements Catalogue.
func (c *EtcdCatalogue) Latest(ctx context.Context, job string) (Manifest, error) {
	return latestOf(ctx, c, job)
}

// List implements Catalogue.
func (c *EtcdCatalogue) List(ctx context.Context, job string) ([]Manifest, error) {
	ms, del, err := c.entries(ctx, job, true)
	if err != nil {
		return nil, err
	}
	out := []Manifest{}
	for i, m := range ms {
		if !del[i] {
			out = append(out, m)
		}
	}
	return out, nil
}

// Deleting implements Catalogue.
func (c *EtcdCatalogue) Deleting(ctx context.Context, job string) ([]int64, error) {
	ms, del, err := c.entries(ctx, job, false)
	if err != nil {
		return nil, err
	}
	out := []int64{}
	for i, m := range ms {
		if del[i] {
			out = append(out, m.Step)
		}
	}
	return out, nil
}

// get reads one entry; found is false if it is missing.
func (c *EtcdCatalogue) get(ctx context.Context, job string, step int64) (m Manifest, deleting bool, modRev int64, found bool, err error) {
	if err := checkJob(job); err != nil {
		return Manifest{}, false, 0, false, err
	}
	if step < 0 {
		return Manifest{}, false, 0, false, nil
	}
	resp, err := c.cli.Get(ctx, c.stepKey(job, step))
	if err != nil {
		return Manifest{}, false, 0, false, fmt.Errorf("checkpoint: etcd catalogue %s step %d: %w", job, step, err)
	}
	if len(resp.Kvs) == 0 {
		return Manifest{}, false, 0, false, nil
	}
	kv := resp.Kvs[0]
	m, deleting, err = decodeEtcdEntry(job, step, kv.Value)
	if err != nil {
		return Manifest{}, false, 0, false, err
	}
	return m, deleting, kv.ModRevision, true, nil
}

// Get implements Catalogue.
func (c *EtcdCatalogue) Get(ctx context.Context, job string, step int64) (Manifest, error) {
	m, _, _, found, err := c.get(ctx, job, step)
	if err != nil {
		return Manifest{}, err
	}
	if !found {
		return Manifest{}, fmt.Errorf("%w: job %s step %d", ErrNotFound, job, step)
	}
	return m, nil
}

var errEtcdConflict = errors.New("checkpoint: etcd catalogue: too many conflicting concurrent changes")

// MarkDeleting implements Catalogue: it rewrites the entry with state
// deleting in a transaction that requires the entry unchanged since it was
// read.
func (c *EtcdCatalogue) MarkDeleting(ctx context.Context, job string, step int64) error {
	for range etcdMaxAttempts {
		m, deleting, rev, found, err := c.get(ctx, job, step)
		switch {
		case err != nil:
			return err
		case !found:
			return fmt.Errorf("%w: job %s step %d", ErrNotFound, job, step)
		case deleting:
			return nil
		}
		val, err := encodeEtcdEntry(m, etcdStateDeleting)
		if err != nil {
			return err
		}
		key := c.stepKey(job, step)
		resp, err := c.write(ctx, job, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
			[]clientv3.Op{clientv3.OpPut(key, val)},
			nil,
		))
		if err != nil {
			return fmt.Errorf("checkpoint: etcd catalogue mark deleting %s step %d: %w", job, step, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: mark deleting %s step %d", errEtcdConflict, job, step)
}

// Remove implements Catalogue. The entry is deleted in a transaction that
// requires it unchanged (still deleting) since it was read; if it is the
// job's greatest step, the same transaction sets max-step to the next
// greatest entry (required unchanged too) or deletes max-step.
func (c *EtcdCatalogue) Remove(ctx context.Context, job string, step int64) error {
	if err := checkJob(job); err != nil {
		return err
	}
	if step < 0 {
		return nil
	}
	key, maxKey := c.stepKey(job, step), c.maxStepKey(job)
	start, _ := c.stepRange(job)
	for range etcdMaxAttempts {
		// One read at one revision: the entry, max-step and the entry
		// below this one.
		resp, err := c.cli.Txn(ctx).Then(
			clientv3.OpGet(key),
			clientv3.OpGet(maxKey),
			clientv3.OpGet(start, clientv3.WithRange(key), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1)),
		).Commit()
		if err != nil {
			return fmt.Errorf("checkpoint: etcd catalogue remove %s step %d: %w", job, step, err)
		}
		entry := resp.Responses[0].GetResponseRange().Kvs
		maxKv := resp.Responses[1].GetResponseRange().Kvs
		below := resp.Responses[2].GetResponseRange().Kvs
		if len(entry) == 0 {
			return nil
		}
		_, deleting, err := decodeEtcdEntry(job, step, entry[0].Value)
		if err != nil {
			return err
		}
		if !deleting {
			return fmt.Errorf("%w: job %s step %d", ErrNotDeleting, job, step)
		}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", entry[0].ModRevision)}
		ops := []clientv3.Op{clientv3.OpDelete(key)}
		if len(maxKv) == 0 || string(maxKv[0].Value) <= formatEtcdStep(step) {
			// This is the greatest entry: max-step follows it down.
			if len(maxKv) == 0 {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(maxKey), "=", 0))
			} else {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(maxKey), "=", maxKv[0].ModRevision))
			}
			if len(below) == 0 {
				ops = append(ops, clientv3.OpDelete(maxKey))
			} else {
				prev, err := c.parseStepKey(job, below[0].Key)
				if err != nil {
					return err
				}
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(below[0].Key)), "=", below[0].ModRevision))
				ops = append(ops, clientv3.OpPut(maxKey, formatEtcdStep(prev)))
			}
			// No entry can appear below this one in between: a commit
			// needs a step above max-step, which the compares pin.
		}
		tr, err := c.write(ctx, job, clientv3.OpTxn(cmps, ops, nil))
		if err != nil {
			return fmt.Errorf("checkpoint: etcd catalogue remove %s step %d: %w", job, step, err)
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: remove %s step %d", errEtcdConflict, job, step)
}
