package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrInvalidManifest is wrapped by every error from Manifest.Validate and
// DecodeManifest; the message after it names the problem.
var ErrInvalidManifest = errors.New("checkpoint: invalid manifest")

// MaxManifestSize bounds an encoded manifest accepted by DecodeManifest.
const MaxManifestSize = 64 << 20

// Shard kinds used by the trainer. Kind is free text to this package; these
// are the conventional values.
const (
	KindParams = "params" // parameters the rank owns
	KindOptim  = "optim"  // optimizer state (AdamW moments, step)
	KindRouter = "router" // router buffers: expert bias, LBL accumulation
	KindData   = "data"   // data-loader position
	KindRNG    = "rng"    // random-number-generator state
)

// Layout is the parallel layout a checkpoint was saved under: world =
// TP*DP ranks, EP divides DP (see package parallel).
type Layout struct {
	TP int `json:"tp"`
	DP int `json:"dp"`
	EP int `json:"ep"`
}

// World is the number of ranks, TP*DP.
func (l Layout) World() int { return l.TP * l.DP }

// ShardInfo describes one stored shard of a checkpoint. Name is relative to
// the checkpoint's prefix (StepPrefix), e.g. "rank-0003/params.bin".
type ShardInfo struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // lowercase hex, 64 characters
	Rank   int    `json:"rank"`   // the rank that wrote it
	Kind   string `json:"kind"`   // KindParams, KindOptim, ...
}

// Manifest lists every shard of one checkpoint with its size and hash, the
// layout it was saved under and the job spec. It is what the catalogue
// commits; its encoding is JSON.
type Manifest struct {
	Job             string            `json:"job"`
	Step            int64             `json:"step"`
	CreatedUnixNano int64             `json:"created_unix_nano"` // set by the caller
	Layout          Layout            `json:"layout"`
	Spec            []byte            `json:"spec,omitempty"` // the job spec, opaque
	Shards          []ShardInfo       `json:"shards"`
	Meta            map[string]string `json:"meta,omitempty"`
}

// MetaValLoss is the Meta key of the validation loss at the checkpoint's
// step, when the run evaluated there (what keep_best ranks by): the
// engine's is the mean over domains of the validation bits per byte
// (`checkpoints list` shows it as VAL LOSS); a command job's trainer
// gives its own (`checkpoints commit --val-loss`).
const MetaValLoss = "val_loss"

// ValLoss is the validation loss recorded in Meta, if any.
func (m Manifest) ValLoss() (float64, bool) {
	v, err := strconv.ParseFloat(m.Meta[MetaValLoss], 64)
	return v, err == nil
}

// Validate checks the manifest's own consistency (not the shards in
// storage: see Verify). Errors wrap ErrInvalidManifest and name the
// problem.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidManifest, fmt.Sprintf(format, a...))
	}
	if err := ValidateJob(m.Job); err != nil {
		return bad("job: %v", err)
	}
	if m.Step < 0 {
		return bad("negative step %d", m.Step)
	}
	l := m.Layout
	switch {
	case l.TP < 1 || l.DP < 1 || l.EP < 1:
		return bad("layout degrees must be >= 1 (tp %d, dp %d, ep %d)", l.TP, l.DP, l.EP)
	case l.TP > 1<<20 || l.DP > 1<<20:
		return bad("layout degrees too large (tp %d, dp %d)", l.TP, l.DP)
	case l.DP%l.EP != 0:
		return bad("layout: ep %d does not divide dp %d", l.EP, l.DP)
	}
	if len(m.Shards) == 0 {
		return bad("no shards")
	}
	seen := make(map[string]bool, len(m.Shards))
	for i, s := range m.Shards {
		if err := ValidateKey(s.Name); err != nil {
			return bad("shard %d name: %v", i, err)
		}
		if seen[s.Name] {
			return bad("duplicate shard %q", s.Name)
		}
		seen[s.Name] = true
		if s.Size < 0 {
			return bad("shard %q: negative size %d", s.Name, s.Size)
		}
		if !isSHA256Hex(s.SHA256) {
			return bad("shard %q: bad sha256 %q (want 64 lowercase hex digits)", s.Name, s.SHA256)
		}
		if s.Rank < 0 || s.Rank >= l.World() {
			return bad("shard %q: rank %d outside [0, %d)", s.Name, s.Rank, l.World())
		}
		if s.Kind == "" {
			return bad("shard %q: empty kind", s.Name)
		}
	}
	// A shard named "a/b" and one named "a/b/c" cannot both be stored.
	for name := range seen {
		for i := strings.IndexByte(name, '/'); i >= 0; i = nextSlash(name, i) {
			if seen[name[:i]] {
				return bad("shard %q is inside shard %q", name, name[:i])
			}
		}
	}
	return nil
}

func nextSlash(s string, i int) int {
	j := strings.IndexByte(s[i+1:], '/')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

// Shard returns the shard with the given name.
func (m *Manifest) Shard(name string) (ShardInfo, bool) {
	for _, s := range m.Shards {
		if s.Name == name {
			return s, true
		}
	}
	return ShardInfo{}, false
}

// TotalSize is the sum of the shard sizes.
func (m *Manifest) TotalSize() int64 {
	var n int64
	for _, s := range m.Shards {
		n += s.Size
	}
	return n
}

// Clone returns a deep copy.
func (m Manifest) Clone() Manifest {
	c := m
	if m.Spec != nil {
		c.Spec = append([]byte{}, m.Spec...)
	}
	c.Shards = append([]ShardInfo(nil), m.Shards...)
	if m.Meta != nil {
		c.Meta = make(map[string]string, len(m.Meta))
		for k, v := range m.Meta {
			c.Meta[k] = v
		}
	}
	return c
}

// EncodeManifest validates m and returns its JSON encoding.
func EncodeManifest(m Manifest) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

// DecodeManifest parses and validates a JSON manifest. Unknown fields are
// rejected, as is trailing data and anything over MaxManifestSize.
func DecodeManifest(b []byte) (Manifest, error) {
	if len(b) > MaxManifestSize {
		return Manifest{}, fmt.Errorf("%w: %d bytes > %d", ErrInvalidManifest, len(b), MaxManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, fmt.Errorf("%w: trailing data", ErrInvalidManifest)
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, err
	}
	// Empty and absent decode alike (the encoding omits both).
	if len(m.Spec) == 0 {
		m.Spec = nil
	}
	if len(m.Meta) == 0 {
		m.Meta = nil
	}
	return m, nil
}

// ValidateJob checks that a job name can be used as one storage key
// segment (it is the first segment of the job's keys).
func ValidateJob(job string) error {
	if job == "" {
		return errors.New("empty job name")
	}
	if strings.Contains(job, "/") {
		return fmt.Errorf("job name %q contains \"/\"", job)
	}
	if err := ValidateKey(job); err != nil {
		return err
	}
	return nil
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// StepPrefix is the storage prefix of a checkpoint's shards, with a
// trailing slash: "JOB/step-000000001200/". Steps are zero-padded to 12
// digits so keys sort by step.
func StepPrefix(job string, step int64) string {
	return fmt.Sprintf("%s/step-%012d/", job, step)
}

// JobPrefix is the storage prefix of all of a job's checkpoints: "JOB/".
func JobPrefix(job string) string { return job + "/" }

// ShardKey is the storage key of a shard: StepPrefix(job, step) + name.
func ShardKey(job string, step int64, name string) string {
	return StepPrefix(job, step) + name
}

// parseStepKey returns the step of a key under JobPrefix(job), or false if
// the key is not in a step directory.
func parseStepKey(job, key string) (int64, bool) {
	rest, ok := strings.CutPrefix(key, JobPrefix(job)+"step-")
	if !ok {
		return 0, false
	}
	digits, _, ok := strings.Cut(rest, "/")
	if !ok || len(digits) < 12 {
		return 0, false
	}
	var step int64
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if c < '0' || c > '9' || step > (1<<62)/10 {
			return 0, false
		}
		step = step*10 + int64(c-'0')
	}
	if fmt.Sprintf("%012d", step) != digits {
		return 0, false
	}
	return step, true
}
