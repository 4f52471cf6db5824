package checkpoint_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

func sampleTensors() []checkpoint.Tensor {
	return []checkpoint.Tensor{
		{Name: "embed.weight", Shape: []int{3, 4}, Data: []float32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
		{Name: "step", Data: []float32{float32(math.Inf(1))}},
		{Name: "empty", Shape: []int{0, 5}, Data: []float32{}},
		{Name: "nan", Shape: []int{2}, Data: []float32{float32(math.NaN()), -0}},
	}
}

func TestShardRoundTrip(t *testing.T) {
	in := sampleTensors()
	b, err := checkpoint.EncodeShard(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[:4]) != "SWYD" || binary.LittleEndian.Uint32(b[4:8]) != 1 {
		t.Fatalf("header = %q", b[:8])
	}
	out, err := checkpoint.DecodeShard(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("got %d tensors, want %d", len(out), len(in))
	}
	for i := range in {
		if out[i].Name != in[i].Name || !reflect.DeepEqual(out[i].Shape, in[i].Shape) || len(out[i].Data) != len(in[i].Data) {
			t.Fatalf("tensor %d = %+v, want %+v", i, out[i], in[i])
		}
		for j := range in[i].Data {
			if math.Float32bits(out[i].Data[j]) != math.Float32bits(in[i].Data[j]) {
				t.Fatalf("tensor %s[%d] bits differ", in[i].Name, j)
			}
		}
	}
	// The data is little-endian float32 right after the table.
	h := binary.LittleEndian.Uint64(b[8:16])
	if v := math.Float32frombits(binary.LittleEndian.Uint32(b[16+h+4:])); v != 1 {
		t.Fatalf("second value in data = %v, want 1", v)
	}
}

func TestWriteShardRejects(t *testing.T) {
	for _, ts := range [][]checkpoint.Tensor{
		{{Name: "", Data: []float32{1}}},
		{{Name: "a", Data: []float32{1}}, {Name: "a", Data: []float32{1}}},
		{{Name: "a", Shape: []int{2}, Data: []float32{1}}},
		{{Name: "a", Shape: []int{-1}, Data: nil}},
	} {
		if _, err := checkpoint.EncodeShard(ts); err == nil {
			t.Errorf("EncodeShard(%+v) succeeded", ts)
		}
	}
}

// rawShard builds a file from a table and data, bypassing WriteShard.
func rawShard(magic string, version uint32, table string, data []byte) []byte {
	var b bytes.Buffer
	b.WriteString(magic)
	binary.Write(&b, binary.LittleEndian, version)
	binary.Write(&b, binary.LittleEndian, uint64(len(table)))
	b.WriteString(table)
	b.Write(data)
	return b.Bytes()
}

func TestReadShardRejects(t *testing.T) {
	good, _ := checkpoint.EncodeShard(sampleTensors())
	tab := func(entries string) string { return `{"tensors":[` + entries + `]}` }
	huge := rawShard("SWYD", 1, "", nil)
	binary.LittleEndian.PutUint64(huge[8:], 1<<62)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "shorter than"},
		{"truncated data", good[:len(good)-1], "runs past the end"},
		{"truncated table", good[:20], "exceeds the file"},
		{"trailing", append(append([]byte(nil), good...), 0), "tensors cover"},
		{"bad magic", rawShard("SWYX", 1, tab(""), nil), "bad magic"},
		{"bad version", rawShard("SWYD", 2, tab(""), nil), "unsupported version 2"},
		{"huge table", huge, "exceeds the file"},
		{"not json", rawShard("SWYD", 1, "{", nil), "table"},
		{"unknown field", rawShard("SWYD", 1, `{"tensors":[],"x":1}`, nil), "unknown field"},
		{"shape mismatch", rawShard("SWYD", 1, tab(`{"name":"a","dtype":"f32","shape":[1],"offset":0,"length":8}`), make([]byte, 8)), "does not match shape"},
		{"past end", rawShard("SWYD", 1, tab(`{"name":"a","dtype":"f32","shape":[4],"offset":0,"length":16}`), make([]byte, 8)), "past the end"},
		{"gap", rawShard("SWYD", 1, tab(`{"name":"a","dtype":"f32","shape":[1],"offset":4,"length":4}`), make([]byte, 8)), "offset 4, want 0"},
		{"overlap", rawShard("SWYD", 1, tab(`{"name":"a","dtype":"f32","shape":[2],"offset":0,"length":8},{"name":"b","dtype":"f32","shape":[1],"offset":4,"length":4}`), make([]byte, 12)), "offset 4, want 8"},
		{"duplicate", rawShard("SWYD", 1, tab(`{"name":"a","dtype":"f32","shape":[],"offset":0,"length":4},{"name":"a","dtype":"f32","shape":[],"offset":4,"length":4}`), make([]byte, 8)), "duplicate tensor"},
		{"dtype", rawShard("SWYD", 1, tab(`{"name":"a","dtype":"f16","shape":[2],"offset":0,"length":4}`), make([]byte, 4)), "unsupported dtype"},
		{"negative dim", rawShard("SWYD", 1, tab(`{"name":"a","dtype":"f32","shape":[-1,-4],"offset":0,"length":16}`), make([]byte, 16)), "negative dimension"},
		{"overflow shape", rawShard("SWYD", 1, tab(`{"name":"a","dtype":"f32","shape":[4294967296,4294967296],"offset":0,"length":0}`), nil), "too large"},
		{"empty name", rawShard("SWYD", 1, tab(`{"name":"","dtype":"f32","shape":[],"offset":0,"length":4}`), make([]byte, 4)), "empty name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := checkpoint.DecodeShard(tc.b)
			if !errors.Is(err, checkpoint.ErrBadShardFile) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeShard = %v, want ErrBadShardFile naming %q", err, tc.want)
			}
		})
	}
	// A reader shorter than the size it claims.
	if _, err := checkpoint.ReadShard(bytes.NewReader(good[:len(good)-3]), int64(len(good))); !errors.Is(err, checkpoint.ErrBadShardFile) {
		t.Fatalf("short reader: %v", err)
	}
}

func FuzzReadShard(f *testing.F) {
	good, _ := checkpoint.EncodeShard(sampleTensors())
	f.Add(good)
	f.Add(good[:30])
	f.Add(rawShard("SWYD", 1, `{"tensors":[{"name":"a","dtype":"f32","shape":[2],"offset":0,"length":8}]}`, make([]byte, 8)))
	f.Fuzz(func(t *testing.T, b []byte) {
		ts, err := checkpoint.DecodeShard(b)
		if err != nil {
			if !errors.Is(err, checkpoint.ErrBadShardFile) {
				t.Fatalf("error does not wrap ErrBadShardFile: %v", err)
			}
			return
		}
		// Bounded allocation: accepted data never exceeds the file.
		total := 0
		for _, tt := range ts {
			total += 4 * len(tt.Data)
		}
		if total > len(b) {
			t.Fatalf("decoded %d bytes of data from a %d-byte file", total, len(b))
		}
		// What decodes re-encodes and decodes to the same tensors.
		b2, err := checkpoint.EncodeShard(ts)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		ts2, err := checkpoint.DecodeShard(b2)
		if err != nil || len(ts2) != len(ts) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func BenchmarkWriteShard(b *testing.B) {
	data := make([]float32, 1<<22) // 16 MiB
	ts := []checkpoint.Tensor{{Name: "w", Shape: []int{len(data)}, Data: data}}
	var buf bytes.Buffer
	b.SetBytes(int64(4 * len(data)))
	for b.Loop() {
		buf.Reset()
		if err := checkpoint.WriteShard(&buf, ts); err != nil {
			b.Fatal(err)
		}
	}
}
