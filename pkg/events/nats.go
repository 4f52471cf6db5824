package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard-ml/switchyard/pkg/security"
)

// SubjectPrefix starts every subject: switchyard.<kind>.<job-id>.
const SubjectPrefix = "switchyard"

// Subject is the NATS subject of a kind and job ("*" for every job).
func Subject(k Kind, jobID string) string {
	if jobID == "" {
		jobID = "*"
	}
	return SubjectPrefix + "." + string(k) + "." + jobID
}

// StreamLimits bound one JetStream stream.
type StreamLimits struct {
	MaxAge time.Duration
	// MaxBytes bounds the whole stream; the oldest messages go first.
	MaxBytes int64
	// MaxMsgsPerJob bounds the messages kept per job (per subject).
	MaxMsgsPerJob int64
}

// NATSConfig configures a NATS bus.
type NATSConfig struct {
	// URL of the NATS server(s), comma separated; required.
	URL string
	// Name identifies the connection in the server's monitoring.
	Name string
	// Buffer is the publish buffer size in messages (default 4096).
	Buffer int
	// PublishTimeout bounds one attempt to send a message (default 2s).
	// Failed attempts are retried, deduplicated by message ID, until the
	// message is sent or the bus is closed.
	PublishTimeout time.Duration
	// CloseTimeout bounds how long Close waits for buffered messages to be
	// sent (default 5s).
	CloseTimeout time.Duration
	// Replicas of each stream (default 1; 3 on a NATS cluster).
	Replicas int
	// Limits per stored kind; zero fields take DefaultLimits.
	Limits map[Kind]StreamLimits
	// TLS, when any file is given, is mutual TLS to a server that asks
	// for TLS (it requires it, or URL says tls://), as etcd's are used
	// for https:// endpoints only: a nats:// server without TLS is
	// reached without.
	TLS security.TLSFiles
	// CredsFile is a NATS credentials file (user JWT and NKey seed; ""
	// none). A user and password, or a token, may also be in URL, which
	// is never logged with them.
	CredsFile string
	Logger    *slog.Logger
}

// CredsEnv names the environment variable that coordinators and workers
// read a NATS credentials file's path from.
const CredsEnv = "SWITCHYARD_NATS_CREDS"

// Redact is url (or a comma-separated list of them) with any password or
// token in it replaced by "xxxxx", for logs.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			if _, hasPass := u.User.Password(); !hasPass {
				u.User = url.User("xxxxx") // a token alone
			}
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// DefaultLimits are the stream limits when NATSConfig.Limits says nothing.
var DefaultLimits = map[Kind]StreamLimits{
	KindEvent:   {MaxAge: 30 * 24 * time.Hour, MaxBytes: 256 << 20, MaxMsgsPerJob: 10_000},
	KindLog:     {MaxAge: 7 * 24 * time.Hour, MaxBytes: 2 << 30, MaxMsgsPerJob: 200_000},
	KindMetrics: {MaxAge: 7 * 24 * time.Hour, MaxBytes: 1 << 30, MaxMsgsPerJob: 100_000},
}

// StreamName is the JetStream stream of a stored kind.
func StreamName(k Kind) string {
	return "SWITCHYARD_" + map[Kind]string{KindEvent: "EVENTS", KindLog: "LOGS", KindMetrics: "METRICS"}[k]
}

// NATS is a Bus on NATS and JetStream.
type NATS struct {
	cfg  NATSConfig
	log  *slog.Logger
	nc   *nats.Conn
	js   jetstream.JetStream
	id   string // prefix of message IDs, unique per bus
	buf  chan Message
	stop chan struct{}
	done chan struct{}

	streamsMu sync.Mutex
	streamsOK bool

	closeOnce sync.Once
	seq       atomic.Uint64
	published atomic.Uint64
	sent      atomic.Uint64
	dropped   atomic.Uint64
}

var _ Bus = (*NATS)(nil)

// NewNATS connects to cfg.URL. It succeeds while the server is down (the
// connection retries in the background), so a worker can start and train
// without NATS.
func NewNATS(cfg NATSConfig) (*NATS, error) {
	if cfg.URL == "" {
		return nil, fmt.Errorf("%w: NATSConfig.URL is required", ErrInvalidMessage)
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = 4096
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 2 * time.Second
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = 5 * time.Second
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b := &NATS{
		cfg: cfg, log: cfg.Logger.With("component", "events"),
		buf: make(chan Message, cfg.Buffer), stop: make(chan struct{}), done: make(chan struct{}),
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	b.id = hex.EncodeToString(rnd[:])
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close
				b.log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { b.log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
	}
	if cfg.TLS.Enabled() {
		tc, err := security.ClientTLS(cfg.TLS, "")
		if err != nil {
			return nil, fmt.Errorf("events: NATS TLS: %w", err)
		}
		// the client certificate for a server that requires TLS (the
		// client then upgrades), TLS insisted on only for tls:// URLs:
		// nats.Secure would refuse a plain nats:// server for ever
		opts = append(opts, func(o *nats.Options) error { o.TLSConfig = tc; return nil })
		if wantsTLS(cfg.URL) {
			opts = append(opts, nats.Secure(tc))
		}
	}
	if cfg.CredsFile != "" {
		if _, err := os.Stat(cfg.CredsFile); err != nil {
			return nil, fmt.Errorf("events: NATS credentials: %w", err)
		}
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("events: connect %s: %w", Redact(cfg.URL), err)
	}
	if !nc.IsConnected() {
		// the retrying connection keeps its reason to itself: one plain
		// try says why ("connection refused", "secure connection
		// required", an authorization violation)
		b.log.Warn("nats not reachable yet; events, logs and metrics are buffered (then dropped) until it is", "url", Redact(cfg.URL), "error", probe(cfg.URL, opts))
	}
	b.nc = nc
	if b.js, err = jetstream.New(nc); err != nil {
		nc.Close()
		return nil, fmt.Errorf("events: jetstream: %w", err)
	}
	go b.sendLoop()
	return b, nil
}

// wantsTLS says whether every URL of urls (comma separated) asks for TLS
// by its scheme.
func wantsTLS(urls string) bool {
	for _, u := range strings.Split(urls, ",") {
		if !strings.HasPrefix(strings.ToLower(strings.TrimSpace(u)), "tls://") {
			return false
		}
	}
	return true
}

// probeTimeout bounds probe's connection attempt.
const probeTimeout = 2 * time.Second

// probe connects once with opts, without retrying, and says what the
// server answered.
func probe(url string, opts []nats.Option) string {
	opts = append(slices.Clone(opts), nats.RetryOnFailedConnect(false), nats.NoReconnect(), nats.Timeout(probeTimeout))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return err.Error()
	}
	nc.Close()
	return "reachable now"
}

// ensureStreams creates or updates the stored kinds' streams once.
func (b *NATS) ensureStreams(ctx context.Context) error {
	b.streamsMu.Lock()
	defer b.streamsMu.Unlock()
	if b.streamsOK {
		return nil
	}
	for _, k := range Kinds {
		if !k.Stored() {
			continue
		}
		lim := DefaultLimits[k]
		if l, ok := b.cfg.Limits[k]; ok {
			if l.MaxAge > 0 {
				lim.MaxAge = l.MaxAge
			}
			if l.MaxBytes > 0 {
				lim.MaxBytes = l.MaxBytes
			}
			if l.MaxMsgsPerJob > 0 {
				lim.MaxMsgsPerJob = l.MaxMsgsPerJob
			}
		}
		_, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:              StreamName(k),
			Subjects:          []string{Subject(k, "")},
			Storage:           jetstream.FileStorage,
			Retention:         jetstream.LimitsPolicy,
			Discard:           jetstream.DiscardOld,
			MaxAge:            lim.MaxAge,
			MaxBytes:          lim.MaxBytes,
			MaxMsgsPerSubject: lim.MaxMsgsPerJob,
			Replicas:          b.cfg.Replicas,
			Duplicates:        2 * time.Minute,
		})
		if err != nil {
			return fmt.Errorf("events: stream %s: %w", StreamName(k), err)
		}
	}
	b.streamsOK = true
	return nil
}

// logShare is how much of a publish buffer of n messages log lines may
// fill: the last quarter is kept for the other kinds.
func logShare(n int) int { return max(n-n/4, 1) }

// Publish implements Bus; it never blocks.
func (b *NATS) Publish(m Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	select {
	case <-b.stop:
		return ErrClosed
	default:
	}
	stamp(&m, time.Now)
	if m.Kind == KindLog && len(b.buf) >= logShare(cap(b.buf)) {
		// a rank printing faster than NATS takes its lines must not
		// crowd out the metrics, events and control messages
		b.dropped.Add(1)
		return ErrDropped
	}
	select {
	case b.buf <- m:
		b.published.Add(1)
		return nil
	default:
		b.dropped.Add(1)
		return ErrDropped
	}
}

// sendLoop sends buffered messages in order, retrying each until it is
// sent or the bus closes.
func (b *NATS) sendLoop() {
	defer close(b.done)
	backoff := 50 * time.Millisecond
	var failing bool
	for {
		var m Message
		select {
		case m = <-b.buf:
		case <-b.stop:
			return
		}
		data, err := encode(m)
		if err != nil {
			b.log.Error("dropping unencodable message", "job-id", m.JobID, "error", err)
			continue
		}
		msgID := b.id + "-" + strconv.FormatUint(b.seq.Add(1), 10)
		for {
			if err = b.send(m, data, msgID); errors.Is(err, nats.ErrMaxPayload) {
				// retrying would block every message behind it for ever
				b.dropped.Add(1)
				b.log.Error("dropping a message larger than the server takes", "job-id", m.JobID, "kind", m.Kind, "bytes", len(data))
				break
			}
			if err == nil {
				b.sent.Add(1)
				if failing {
					b.log.Info("publishing to nats again")
				}
				failing, backoff = false, 50*time.Millisecond
				break
			}
			if !failing {
				b.log.Warn("publishing to nats failed; buffering", "error", err, "buffered", len(b.buf))
				failing = true
			}
			select {
			case <-b.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
		}
	}
}

func (b *NATS) send(m Message, data []byte, msgID string) error {
	subj := Subject(m.Kind, m.JobID)
	if !m.Kind.Stored() {
		if !b.nc.IsConnected() {
			return nats.ErrConnectionClosed
		}
		return b.nc.Publish(subj, data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.PublishTimeout)
	defer cancel()
	if err := b.ensureStreams(ctx); err != nil {
		return err
	}
	_, err := b.js.Publish(ctx, subj, data, jetstream.WithMsgID(msgID))
	return err
}

// Subscribe implements Bus. A stored-kind subscription is an ordered
// consumer: after a reconnect or a NATS restart it resumes after the last
// message it delivered.
func (b *NATS) Subscribe(ctx context.Context, f Filter) (<-chan Message, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	out := make(chan Message)
	if !f.Kind.Stored() {
		ch := make(chan *nats.Msg, 256)
		sub, err := b.nc.ChanSubscribe(Subject(f.Kind, f.JobID), ch)
		if err != nil {
			return nil, fmt.Errorf("events: subscribe: %w", err)
		}
		// A core subscription reaches the server with the connection's
		// next flush; until the server's PONG it may miss a message
		// published after Subscribe returned. While disconnected there is
		// nothing to wait for: the client subscribes again on reconnect.
		if b.nc.IsConnected() {
			b.nc.FlushTimeout(b.cfg.PublishTimeout) //nolint:errcheck // best effort: a lost PONG leaves the subscription as it would be without it
		}
		go func() {
			defer close(out)
			defer sub.Unsubscribe()
			for {
				select {
				case <-ctx.Done():
					return
				case <-b.stop:
					return
				case nm := <-ch:
					m, err := decode(nm.Data)
					if err != nil {
						continue
					}
					select {
					case out <- m:
					case <-ctx.Done():
						return
					case <-b.stop:
						return
					}
				}
			}
		}()
		return out, nil
	}
	cons, err := b.consumer(ctx, f)
	if err != nil {
		return nil, err
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("events: subscribe: %w", err)
	}
	go func() {
		<-mergeDone(ctx.Done(), b.stop)
		it.Stop()
	}()
	go func() {
		defer close(out)
		for {
			jm, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
					return
				}
				continue
			}
			m, ok := fromJetStream(jm)
			if !ok {
				continue
			}
			select {
			case out <- m:
			case <-ctx.Done():
				return
			case <-b.stop:
				return
			}
		}
	}()
	return out, nil
}

func (b *NATS) consumer(ctx context.Context, f Filter) (jetstream.Consumer, error) {
	if err := b.ensureStreams(ctx); err != nil {
		return nil, err
	}
	pol := jetstream.DeliverNewPolicy
	if f.Replay {
		pol = jetstream.DeliverAllPolicy
	}
	cons, err := b.js.OrderedConsumer(ctx, StreamName(f.Kind), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{Subject(f.Kind, f.JobID)},
		DeliverPolicy:  pol,
	})
	if err != nil {
		return nil, fmt.Errorf("events: consumer on %s: %w", StreamName(f.Kind), err)
	}
	return cons, nil
}

func fromJetStream(jm jetstream.Msg) (Message, bool) {
	m, err := decode(jm.Data())
	if err != nil {
		return Message{}, false
	}
	if meta, err := jm.Metadata(); err == nil {
		m.Seq = meta.Sequence.Stream
	}
	return m, true
}

// History implements Bus.
func (b *NATS) History(ctx context.Context, f Filter) ([]Message, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	if !f.Kind.Stored() {
		return nil, nil
	}
	f.Replay = true
	cons, err := b.consumer(ctx, f)
	if err != nil {
		return nil, err
	}
	pending := cons.CachedInfo().NumPending
	var out []Message
	for uint64(len(out)) < pending {
		batch, err := cons.Fetch(int(min(pending-uint64(len(out)), 1000)), jetstream.FetchContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("events: history: %w", err)
		}
		n := 0
		for jm := range batch.Messages() {
			n++
			if m, ok := fromJetStream(jm); ok {
				out = append(out, m)
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("events: history: %w", err)
		}
		if n == 0 {
			break
		}
	}
	return out, nil
}

// Stats implements Bus.
func (b *NATS) Stats() Stats {
	return Stats{Published: b.published.Load(), Sent: b.sent.Load(), Dropped: b.dropped.Load(), Buffered: len(b.buf), Connected: b.nc.IsConnected()}
}

// Close waits up to CloseTimeout for every accepted message to be sent,
// then stops sending and closes the connection; what is still buffered is
// lost.
func (b *NATS) Close() error {
	b.closeOnce.Do(func() {
		deadline := time.Now().Add(b.cfg.CloseTimeout)
		for b.sent.Load() < b.published.Load() && time.Now().Before(deadline) && b.nc.IsConnected() {
			time.Sleep(5 * time.Millisecond)
		}
		close(b.stop)
		<-b.done
		b.nc.Close()
	})
	return nil
}

func mergeDone(a <-chan struct{}, b chan struct{}) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		select {
		case <-a:
		case <-b:
		}
		close(out)
	}()
	return out
}
