package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

var (
	// ErrDropped: the publish buffer was full; the message was dropped.
	ErrDropped = errors.New("events: buffer full, message dropped")
	// ErrClosed: the bus was closed.
	ErrClosed = errors.New("events: bus closed")
	// ErrInvalidMessage: the message cannot be published as given.
	ErrInvalidMessage = errors.New("events: invalid message")
)

// Kind is a family of messages; each has its own subject space and, for
// the stored kinds, its own stream.
type Kind string

const (
	// KindEvent: job lifecycle events (submitted, placed, failed, ...). Stored.
	KindEvent Kind = "events"
	// KindMetrics: per-step training metrics. Stored with short retention.
	KindMetrics Kind = "metrics"
	// KindLog: worker log lines. Stored.
	KindLog Kind = "logs"
	// KindControl: control messages to a job's workers (cancel). Not stored.
	KindControl Kind = "control"
)

// Kinds lists every kind.
var Kinds = []Kind{KindEvent, KindMetrics, KindLog, KindControl}

// Stored reports whether messages of kind k are kept for replay.
func (k Kind) Stored() bool { return k == KindEvent || k == KindMetrics || k == KindLog }

func (k Kind) valid() bool {
	switch k {
	case KindEvent, KindMetrics, KindLog, KindControl:
		return true
	}
	return false
}

// JobEvent is a lifecycle event of a job.
type JobEvent struct {
	Type     string `json:"type"`
	State    string `json:"state,omitempty"`
	Message  string `json:"message,omitempty"`
	WorkerID string `json:"worker_id,omitempty"`
}

// StepMetrics are one rank's metrics for one optimizer step.
type StepMetrics struct {
	Step int64   `json:"step"`
	Rank int     `json:"rank"`
	Loss float64 `json:"loss"`
	LBL  float64 `json:"lbl"`
	// NoLBL: the step's metrics carry no LBL (LBL is 0 and means nothing).
	NoLBL           bool    `json:"no_lbl,omitempty"`
	TokensPerSecond float64 `json:"tokens_per_second"`
	// ExpertLoadLE is the share of routed tokens per expert, per MoE layer.
	ExpertLoadLE [][]float64 `json:"expert_load,omitempty"`
	// GPUUtilPct is each GPU rank's utilisation after the step, by rank
	// (GPU runs with NVML; -1: not known).
	GPUUtilPct []float64 `json:"gpu_util_pct,omitempty"`
}

// LogLine is one line a worker logged for a job.
type LogLine struct {
	Rank     int    `json:"rank"`
	WorkerID string `json:"worker_id,omitempty"`
	Stream   string `json:"stream,omitempty"` // "stdout", "stderr"
	Line     string `json:"line"`
}

// Control is a command to a job's workers.
type Control struct {
	Action string `json:"action"` // "cancel"
	Reason string `json:"reason,omitempty"`
}

// Message is what travels on the bus: a kind, a job, a time and the one
// payload field that matches the kind.
type Message struct {
	Kind  Kind      `json:"kind"`
	JobID string    `json:"job_id"`
	Time  time.Time `json:"time"`
	// Seq is the message's position in its stream, set on delivery of a
	// stored kind (0 otherwise). Increasing within one job and kind.
	Seq uint64 `json:"-"`

	Event   *JobEvent    `json:"event,omitempty"`
	Metrics *StepMetrics `json:"metrics,omitempty"`
	Log     *LogLine     `json:"log,omitempty"`
	Control *Control     `json:"control,omitempty"`
}

// Validate checks the kind, the job ID (a single subject token) and that
// the payload matches the kind.
func (m *Message) Validate() error {
	if !m.Kind.valid() {
		return fmt.Errorf("%w: kind %q", ErrInvalidMessage, m.Kind)
	}
	if err := validJobID(m.JobID); err != nil {
		return err
	}
	var ok bool
	switch m.Kind {
	case KindEvent:
		ok = m.Event != nil && m.Metrics == nil && m.Log == nil && m.Control == nil
	case KindMetrics:
		ok = m.Metrics != nil && m.Event == nil && m.Log == nil && m.Control == nil
	case KindLog:
		ok = m.Log != nil && m.Event == nil && m.Metrics == nil && m.Control == nil
	case KindControl:
		ok = m.Control != nil && m.Event == nil && m.Metrics == nil && m.Log == nil
	}
	if !ok {
		return fmt.Errorf("%w: a %s message needs exactly its own payload", ErrInvalidMessage, m.Kind)
	}
	return nil
}

func validJobID(id string) error {
	if id == "" || strings.ContainsAny(id, ".*> \t\r\n") {
		return fmt.Errorf("%w: job id %q (non-empty, no '.', '*', '>' or spaces)", ErrInvalidMessage, id)
	}
	return nil
}

// Filter selects what a subscription receives.
type Filter struct {
	Kind Kind
	// JobID selects one job; empty selects every job.
	JobID string
	// Replay delivers the stored history first (stored kinds only), then
	// live messages; otherwise only messages published after Subscribe.
	Replay bool
}

func (f Filter) validate() error {
	if !f.Kind.valid() {
		return fmt.Errorf("%w: kind %q", ErrInvalidMessage, f.Kind)
	}
	if f.JobID != "" {
		return validJobID(f.JobID)
	}
	return nil
}

// Stats counts what a bus did with published messages.
type Stats struct {
	// Published: accepted into the buffer.
	Published uint64 `json:"published"`
	// Sent: delivered to the server (acknowledged, for stored kinds).
	Sent uint64 `json:"sent"`
	// Dropped: refused because the buffer was full.
	Dropped uint64 `json:"dropped"`
	// Buffered: waiting to be sent now.
	Buffered int `json:"buffered"`
	// Connected: the bus reaches its server now (always, in memory).
	Connected bool `json:"connected"`
}

// Bus carries job events, metrics, logs and control messages.
type Bus interface {
	// Publish queues m without blocking. It stamps m.Time when zero. It
	// returns ErrDropped when the buffer is full (the message is counted
	// and lost), ErrInvalidMessage or ErrClosed.
	Publish(m Message) error
	// Subscribe delivers matching messages in order until ctx ends or the
	// bus closes; then it closes the channel.
	Subscribe(ctx context.Context, f Filter) (<-chan Message, error)
	// History returns the stored messages matching f as of now (f.Replay
	// is implied), oldest first: `job logs` of a finished job.
	History(ctx context.Context, f Filter) ([]Message, error)
	// Stats reports the publish counters.
	Stats() Stats
	// Close flushes what it can within a short time and releases the bus.
	Close() error
}

func encode(m Message) ([]byte, error) { return json.Marshal(m) }

func decode(b []byte) (Message, error) {
	var m Message
	err := json.Unmarshal(b, &m)
	return m, err
}

func stamp(m *Message, now func() time.Time) {
	if m.Time.IsZero() {
		m.Time = now()
	}
}
