package parallel

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	parallelv1 "github.com/switchyard-ml/switchyard/proto/parallel/v1"
)

// frameCodec is the gRPC codec of the transport's streams. It writes and
// reads the protobuf wire format of parallelv1.Frame (proto/parallel/v1), so
// any protobuf implementation can talk to it, but by hand: Marshal hands the
// caller's payload to gRPC without copying it, and Unmarshal copies a chunk's
// bytes straight into the message being assembled. Other messages fall back
// to the standard protobuf codec.
type frameCodec struct{}

const (
	keyTag   = 1<<3 | 0 // varint
	keySize  = 2<<3 | 0
	keyData  = 3<<3 | 2 // length-delimited
	keyHello = 15<<3 | 2
)

var errBadFrame = errors.New("parallel: malformed frame")

// outFrame is a frame to send; data (may be nil) is owned by the codec once
// passed to SendMsg.
type outFrame struct {
	tag, size uint64
	data      mem.Buffer
	hello     *parallelv1.Hello
}

// inFrame receives a frame. dest, if set, is called once the data field's
// length is known and returns where to copy the n chunk bytes; otherwise the
// chunk is copied into a new slice (data).
type inFrame struct {
	tag, size uint64
	n         int // chunk bytes
	data      []byte
	hello     *parallelv1.Hello
	dest      func(f *inFrame, n int) ([]byte, error)
}

func (frameCodec) Name() string { return "proto" }

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func (frameCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*outFrame)
	if !ok {
		return encoding.GetCodecV2(protoenc.Name).Marshal(v)
	}
	hdr := make([]byte, 0, 32)
	if f.tag != 0 {
		hdr = appendVarint(append(hdr, keyTag), f.tag)
	}
	if f.size != 0 {
		hdr = appendVarint(append(hdr, keySize), f.size)
	}
	if f.hello != nil {
		hb, err := proto.Marshal(f.hello)
		if err != nil {
			return nil, err
		}
		hdr = appendVarint(append(hdr, keyHello), uint64(len(hb)))
		hdr = append(hdr, hb...)
	}
	if f.data == nil || f.data.Len() == 0 {
		if f.data != nil {
			f.data.Free()
		}
		return mem.BufferSlice{mem.SliceBuffer(hdr)}, nil
	}
	hdr = appendVarint(append(hdr, keyData), uint64(f.data.Len()))
	return mem.BufferSlice{mem.SliceBuffer(hdr), f.data}, nil
}

func readVarint(r io.ByteReader) (uint64, error) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		b, err := r.ReadByte()
		if err != nil {
			return 0, errBadFrame
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, errBadFrame
}

func (frameCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*inFrame)
	if !ok {
		return encoding.GetCodecV2(protoenc.Name).Unmarshal(data, v)
	}
	r := data.Reader()
	defer r.Close()
	return f.decode(r)
}

// byteReader is what decode needs from mem.Reader.
type byteReader interface {
	io.Reader
	io.ByteReader
	Remaining() int
	Discard(n int) (int, error)
}

func (f *inFrame) decode(r byteReader) error {
	f.tag, f.size, f.n, f.data, f.hello = 0, 0, 0, nil, nil
	seenData := false
	for r.Remaining() > 0 {
		key, err := readVarint(r)
		if err != nil {
			return err
		}
		field, wire := key>>3, key&7
		switch {
		case field == 1 && wire == 0:
			if f.tag, err = readVarint(r); err != nil {
				return err
			}
		case field == 2 && wire == 0:
			if f.size, err = readVarint(r); err != nil {
				return err
			}
		case field == 3 && wire == 2:
			n, err := readVarint(r)
			if err != nil || n > uint64(r.Remaining()) {
				return errBadFrame
			}
			if seenData {
				return fmt.Errorf("%w: data field repeated", errBadFrame)
			}
			seenData = true
			f.n = int(n)
			var dst []byte
			if f.dest != nil && r.Remaining() == int(n) { // data last: tag and size known
				if dst, err = f.dest(f, int(n)); err != nil {
					return err
				}
			} else {
				f.data = make([]byte, n)
				dst = f.data
			}
			if _, err := io.ReadFull(r, dst); err != nil {
				return errBadFrame
			}
		case field == 15 && wire == 2:
			n, err := readVarint(r)
			if err != nil || n > uint64(r.Remaining()) {
				return errBadFrame
			}
			b := make([]byte, n)
			if _, err := io.ReadFull(r, b); err != nil {
				return errBadFrame
			}
			f.hello = new(parallelv1.Hello)
			if err := proto.Unmarshal(b, f.hello); err != nil {
				return fmt.Errorf("%w: hello: %v", errBadFrame, err)
			}
		default: // unknown field: skip it
			if err := skipField(r, wire); err != nil {
				return err
			}
		}
	}
	return nil
}

func skipField(r byteReader, wire uint64) error {
	var n uint64
	switch wire {
	case 0:
		_, err := readVarint(r)
		return err
	case 1:
		n = 8
	case 2:
		var err error
		if n, err = readVarint(r); err != nil {
			return err
		}
	case 5:
		n = 4
	default:
		return fmt.Errorf("%w: wire type %d", errBadFrame, wire)
	}
	if n > uint64(r.Remaining()) {
		return errBadFrame
	}
	_, err := r.Discard(int(n))
	return err
}
