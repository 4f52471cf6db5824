package checkpoint_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func validManifest() checkpoint.Manifest {
	return checkpoint.Manifest{
		Job: "job-1", Step: 42, CreatedUnixNano: 7,
		Layout: checkpoint.Layout{TP: 2, DP: 2, EP: 2},
		Spec:   []byte("spec: yes"),
		Shards: []checkpoint.ShardInfo{
			{Name: "rank-0000/params.bin", Size: 3, SHA256: hexSum([]byte("abc")), Rank: 0, Kind: checkpoint.KindParams},
			{Name: "rank-0003/optim.bin", Size: 0, SHA256: hexSum(nil), Rank: 3, Kind: checkpoint.KindOptim},
		},
		Meta: map[string]string{"val-loss": "1.25"},
	}
}

func TestManifestValidate(t *testing.T) {
	m := validManifest()
	if err := m.Validate(); err != nil {
		t.Fatalf("valid manifest: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(m *checkpoint.Manifest)
		want   string
	}{
		{"empty job", func(m *checkpoint.Manifest) { m.Job = "" }, "empty job"},
		{"slash job", func(m *checkpoint.Manifest) { m.Job = "a/b" }, "contains \"/\""},
		{"negative step", func(m *checkpoint.Manifest) { m.Step = -1 }, "negative step -1"},
		{"zero tp", func(m *checkpoint.Manifest) { m.Layout.TP = 0 }, "degrees must be >= 1"},
		{"ep not dividing dp", func(m *checkpoint.Manifest) { m.Layout.EP = 3 }, "ep 3 does not divide dp 2"},
		{"no shards", func(m *checkpoint.Manifest) { m.Shards = nil }, "no shards"},
		{"duplicate shard", func(m *checkpoint.Manifest) { m.Shards[1].Name = m.Shards[0].Name }, "duplicate shard \"rank-0000/params.bin\""},
		{"bad hash", func(m *checkpoint.Manifest) { m.Shards[0].SHA256 = strings.ToUpper(m.Shards[0].SHA256) }, "bad sha256"},
		{"short hash", func(m *checkpoint.Manifest) { m.Shards[0].SHA256 = "abcd" }, "bad sha256"},
		{"negative size", func(m *checkpoint.Manifest) { m.Shards[0].Size = -1 }, "negative size"},
		{"rank out of range", func(m *checkpoint.Manifest) { m.Shards[0].Rank = 4 }, "rank 4 outside [0, 4)"},
		{"empty kind", func(m *checkpoint.Manifest) { m.Shards[0].Kind = "" }, "empty kind"},
		{"dotdot name", func(m *checkpoint.Manifest) { m.Shards[0].Name = "../x" }, "contains \"..\""},
		{"absolute name", func(m *checkpoint.Manifest) { m.Shards[0].Name = "/x" }, "is absolute"},
		{"nested names", func(m *checkpoint.Manifest) { m.Shards[1].Name = "rank-0000/params.bin/x" }, "is inside shard"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := validManifest()
			tc.change(&m)
			err := m.Validate()
			if !errors.Is(err, checkpoint.ErrInvalidManifest) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrInvalidManifest naming %q", err, tc.want)
			}
		})
	}
}

func TestManifestEncodeDecode(t *testing.T) {
	m := validManifest()
	b, err := checkpoint.EncodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := checkpoint.DecodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
	}
	for _, bad := range []string{
		``, `{`, `[]`, `{"job":"j","step":1,"bogus":1}`,
		string(b) + `{}`,
		strings.Replace(string(b), `"step":42`, `"step":-3`, 1),
	} {
		if _, err := checkpoint.DecodeManifest([]byte(bad)); !errors.Is(err, checkpoint.ErrInvalidManifest) {
			t.Errorf("DecodeManifest(%.40q) = %v, want ErrInvalidManifest", bad, err)
		}
	}
}

func FuzzDecodeManifest(f *testing.F) {
	b, _ := checkpoint.EncodeManifest(validManifest())
	f.Add(b)
	f.Add([]byte(`{"job":"j","step":1,"layout":{"tp":1,"dp":1,"ep":1},"shards":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := checkpoint.DecodeManifest(b)
		if err != nil {
			return
		}
		// Anything accepted is valid and re-encodes to an equal manifest.
		b2, err := checkpoint.EncodeManifest(m)
		if err != nil {
			t.Fatalf("decoded manifest does not encode: %v", err)
		}
		m2, err := checkpoint.DecodeManifest(b2)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func TestStepPrefix(t *testing.T) {
	if got := checkpoint.StepPrefix("j", 1200); got != "j/step-000000001200/" {
		t.Fatalf("StepPrefix = %q", got)
	}
	if got := checkpoint.ShardKey("j", 7, "rank-0001/params.bin"); got != "j/step-000000000007/rank-0001/params.bin" {
		t.Fatalf("ShardKey = %q", got)
	}
}
