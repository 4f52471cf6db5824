package parallel

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	parallelv1 "github.com/switchyard-ml/switchyard/proto/parallel/v1"
)

func marshalOut(t testing.TB, f *outFrame) []byte {
	t.Helper()
	bs, err := frameCodec{}.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Free()
	return bs.Materialize()
}

func decodeIn(b []byte, dest func(f *inFrame, n int) ([]byte, error)) (*inFrame, error) {
	f := &inFrame{dest: dest}
	return f, frameCodec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, f)
}

// The hand-written codec and the generated proto agree both ways.
func TestCodecMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	hello := &parallelv1.Hello{Rank: 3, World: 8, Session: "job-7"}
	for _, c := range []struct {
		tag, size uint64
		n         int
		hello     bool
	}{
		{0, 0, 0, false}, {1, 0, 0, false}, {0, 0, 0, true}, {1 << 40, 5, 5, false},
		{^uint64(0), 1 << 33, 70_000, false}, {42, 1 << 20, 1 << 16, false}, {7, 9, 3, true},
	} {
		data := randBytes(rng, c.n)
		out := &outFrame{tag: c.tag, size: c.size}
		want := &parallelv1.Frame{Tag: c.tag, Size: c.size, Data: data}
		if c.n > 0 {
			out.data = mem.SliceBuffer(append([]byte(nil), data...))
		}
		if c.hello {
			out.hello, want.Hello = hello, hello
		}
		// ours -> proto
		wire := marshalOut(t, out)
		var got parallelv1.Frame
		if err := proto.Unmarshal(wire, &got); err != nil {
			t.Fatalf("%+v: proto.Unmarshal of our frame: %v", c, err)
		}
		if !proto.Equal(&got, want) {
			t.Fatalf("%+v: proto reads %v, want %v", c, &got, want)
		}
		// proto -> ours, with and without a destination for the data
		pw, err := proto.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		for _, withDest := range []bool{false, true} {
			var dst []byte
			var dest func(f *inFrame, n int) ([]byte, error)
			if withDest {
				dest = func(f *inFrame, n int) ([]byte, error) {
					if f.tag != c.tag || f.size != c.size {
						t.Errorf("dest called before tag and size were read: %d %d", f.tag, f.size)
					}
					dst = make([]byte, n)
					return dst, nil
				}
			}
			f, err := decodeIn(pw, dest)
			if err != nil {
				t.Fatalf("%+v: our decode of a proto frame: %v", c, err)
			}
			gotData := f.data // dest is used only when data is the last field
			if dst != nil {
				gotData = dst
			}
			if f.tag != c.tag || f.size != c.size || f.n != c.n || !bytes.Equal(gotData, data) ||
				(f.hello != nil) != c.hello || (c.hello && !proto.Equal(f.hello, hello)) {
				t.Fatalf("%+v (dest %v): decoded tag %d size %d n %d hello %v", c, withDest, f.tag, f.size, f.n, f.hello)
			}
		}
	}
}

// Unknown fields (a newer peer's) are skipped; malformed input is an error.
func TestCodecUnknownAndMalformed(t *testing.T) {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 9)
	b = protowire.AppendTag(b, 20, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("future"))
	b = protowire.AppendTag(b, 21, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 1)
	b = protowire.AppendTag(b, 22, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 1)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("abc"))
	f, err := decodeIn(b, nil)
	if err != nil || f.tag != 9 || string(f.data) != "abc" {
		t.Fatalf("frame with unknown fields: %+v, %v", f, err)
	}
	for _, bad := range [][]byte{
		{0x08},                   // truncated varint
		{0x1a, 0x05, 'a'},        // data longer than the frame
		{0x0b},                   // group wire type
		{0x7a, 0x02, 0xff, 0xff}, // hello that is not a Hello
		{0x1a, 0x00, 0x1a, 0x00}, // data twice
		bytes.Repeat([]byte{0x80}, 11),
	} {
		if _, err := decodeIn(bad, nil); err == nil {
			t.Errorf("decode(%x) succeeded", bad)
		}
	}
}

// FuzzDecodeFrame: decoding never panics, and whatever it accepts the
// generated proto reads the same way.
func FuzzDecodeFrame(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x01, 0x10, 0x03, 0x1a, 0x03, 'a', 'b', 'c'})
	f.Add([]byte{0x7a, 0x06, 0x08, 0x01, 0x10, 0x02, 0x1a, 0x00})
	f.Add([]byte{0xa2, 0x01, 0x01, 'x', 0x1a, 0x01, 'y'})
	f.Fuzz(func(t *testing.T, b []byte) {
		var dst []byte
		fr, err := decodeIn(b, func(f *inFrame, n int) ([]byte, error) {
			dst = make([]byte, n)
			return dst, nil
		})
		if err != nil {
			return
		}
		var p parallelv1.Frame
		if perr := proto.Unmarshal(b, &p); perr != nil {
			return // proto is stricter in places (e.g. wire types of known fields)
		}
		data := fr.data
		if dst != nil {
			data = dst
		}
		if fr.tag != p.Tag || fr.size != p.Size || !bytes.Equal(data, p.Data) || fr.n != len(p.Data) {
			t.Fatalf("ours: tag %d size %d data %x; proto: %v", fr.tag, fr.size, data, &p)
		}
	})
}
