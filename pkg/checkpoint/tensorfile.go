package checkpoint

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"unsafe"
)

// Tensor shard file format, version 1 (all integers little-endian):
//
//	offset 0   magic "SWYD"
//	offset 4   uint32 version (1)
//	offset 8   uint64 H, the length of the header table
//	offset 16  H bytes of JSON: {"tensors":[{"name","dtype","shape","offset","length"}...]}
//	offset 16+H  data: each tensor's float32 values, little-endian
//
// offset and length are in bytes relative to the start of the data. The
// reader is strict: tensors must be stored in table order, back to back,
// and exactly fill the data region; names are unique and non-empty; dtype
// is "f32"; length is 4 * the product of the shape.

// ErrBadShardFile is wrapped by every error ReadShard and DecodeShard
// return for a malformed file; the message after it names the problem.
var ErrBadShardFile = errors.New("checkpoint: bad tensor shard file")

const (
	shardMagic       = "SWYD"
	shardVersion     = 1
	shardFixedHeader = 16
	// MaxShardTable bounds the JSON table of a tensor shard file.
	MaxShardTable = 16 << 20
	dtypeF32      = "f32"
)

// Tensor is one named float32 buffer with its shape. A nil or empty Shape
// is a scalar (one element).
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
}

type shardTable struct {
	Tensors []shardEntry `json:"tensors"`
}

type shardEntry struct {
	Name   string `json:"name"`
	DType  string `json:"dtype"`
	Shape  []int  `json:"shape"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
}

// numElements is the product of shape, or an error on a negative dimension
// or overflow past limit.
func numElements(shape []int, limit int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d != 0 && n > limit/int64(d) {
			return 0, fmt.Errorf("shape %v too large", shape)
		}
		n *= int64(d)
	}
	return n, nil
}

// WriteShard writes tensors to w in the tensor shard format. Names must be
// unique and non-empty and len(Data) must equal the product of Shape.
func WriteShard(w io.Writer, tensors []Tensor) error {
	tab := shardTable{Tensors: make([]shardEntry, 0, len(tensors))}
	seen := make(map[string]bool, len(tensors))
	var off int64
	for _, t := range tensors {
		if t.Name == "" {
			return errors.New("checkpoint: write shard: empty tensor name")
		}
		if seen[t.Name] {
			return fmt.Errorf("checkpoint: write shard: duplicate tensor %q", t.Name)
		}
		seen[t.Name] = true
		n, err := numElements(t.Shape, math.MaxInt64/4)
		if err != nil {
			return fmt.Errorf("checkpoint: write shard: tensor %q: %v", t.Name, err)
		}
		if n != int64(len(t.Data)) {
			return fmt.Errorf("checkpoint: write shard: tensor %q: shape %v has %d elements, data has %d",
				t.Name, t.Shape, n, len(t.Data))
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		tab.Tensors = append(tab.Tensors, shardEntry{Name: t.Name, DType: dtypeF32, Shape: shape, Offset: off, Length: 4 * n})
		off += 4 * n
	}
	js, err := json.Marshal(tab)
	if err != nil {
		return fmt.Errorf("checkpoint: write shard: %w", err)
	}
	if len(js) > MaxShardTable {
		return fmt.Errorf("checkpoint: write shard: table of %d bytes > %d", len(js), MaxShardTable)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	var fixed [shardFixedHeader]byte
	copy(fixed[:4], shardMagic)
	binary.LittleEndian.PutUint32(fixed[4:8], shardVersion)
	binary.LittleEndian.PutUint64(fixed[8:16], uint64(len(js)))
	bw.Write(fixed[:])
	bw.Write(js)
	var buf [4096]byte
	for _, t := range tensors {
		if littleEndian && len(t.Data) > 0 {
			// the in-memory layout is the file layout: write it as is
			raw := unsafe.Slice((*byte)(unsafe.Pointer(&t.Data[0])), 4*len(t.Data))
			if _, err := bw.Write(raw); err != nil {
				return fmt.Errorf("checkpoint: write shard: %w", err)
			}
			continue
		}
		for d := t.Data; len(d) > 0; {
			k := min(len(d), len(buf)/4)
			for i, v := range d[:k] {
				binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
			}
			if _, err := bw.Write(buf[:4*k]); err != nil {
				return fmt.Errorf("checkpoint: write shard: %w", err)
			}
			d = d[k:]
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("checkpoint: write shard: %w", err)
	}
	return nil
}

// littleEndian reports whether float32 values are stored little-endian in
// memory, the shard format's byte order.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// EncodeShard returns the tensor shard encoding of tensors.
func EncodeShard(tensors []Tensor) ([]byte, error) {
	var b bytes.Buffer
	if err := WriteShard(&b, tensors); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// DecodeShard parses a tensor shard file held in memory.
func DecodeShard(b []byte) ([]Tensor, error) {
	return ReadShard(bytes.NewReader(b), int64(len(b)))
}

// ReadShard reads a tensor shard file of exactly size bytes from r and
// returns its tensors in file order. Every claim of the header is checked
// against size before anything is allocated for it, so a malformed file
// costs at most about size bytes of memory; a file shorter or longer than
// size is an error.
func ReadShard(r io.Reader, size int64) ([]Tensor, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadShardFile, fmt.Sprintf(format, a...))
	}
	if size < shardFixedHeader {
		return nil, bad("size %d shorter than the %d-byte header", size, shardFixedHeader)
	}
	br := bufio.NewReaderSize(r, 1<<16)
	var fixed [shardFixedHeader]byte
	if _, err := io.ReadFull(br, fixed[:]); err != nil {
		return nil, bad("truncated header: %v", err)
	}
	if string(fixed[:4]) != shardMagic {
		return nil, bad("bad magic %q", fixed[:4])
	}
	if v := binary.LittleEndian.Uint32(fixed[4:8]); v != shardVersion {
		return nil, bad("unsupported version %d", v)
	}
	h := binary.LittleEndian.Uint64(fixed[8:16])
	if h > uint64(size-shardFixedHeader) {
		return nil, bad("table length %d exceeds the file (%d bytes)", h, size)
	}
	if h > MaxShardTable {
		return nil, bad("table length %d > %d", h, MaxShardTable)
	}
	js := make([]byte, h)
	if _, err := io.ReadFull(br, js); err != nil {
		return nil, bad("truncated table: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var tab shardTable
	if err := dec.Decode(&tab); err != nil {
		return nil, bad("table: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("table: trailing data")
	}
	dataLen := size - shardFixedHeader - int64(h)
	seen := make(map[string]bool, len(tab.Tensors))
	var off int64
	for i, e := range tab.Tensors {
		switch {
		case e.Name == "":
			return nil, bad("tensor %d: empty name", i)
		case seen[e.Name]:
			return nil, bad("duplicate tensor %q", e.Name)
		case e.DType != dtypeF32:
			return nil, bad("tensor %q: unsupported dtype %q", e.Name, e.DType)
		case e.Offset != off:
			return nil, bad("tensor %q: offset %d, want %d (tensors must be contiguous, in order)", e.Name, e.Offset, off)
		case e.Length < 0 || e.Length > dataLen-off:
			return nil, bad("tensor %q: length %d at offset %d runs past the end of the data (%d bytes)", e.Name, e.Length, e.Offset, dataLen)
		}
		seen[e.Name] = true
		n, err := numElements(e.Shape, dataLen/4)
		if err != nil {
			return nil, bad("tensor %q: %v", e.Name, err)
		}
		if 4*n != e.Length {
			return nil, bad("tensor %q: length %d does not match shape %v (%d bytes)", e.Name, e.Length, e.Shape, 4*n)
		}
		off += e.Length
	}
	if off != dataLen {
		return nil, bad("tensors cover %d bytes, data region has %d", off, dataLen)
	}
	out := make([]Tensor, len(tab.Tensors))
	var buf [4096]byte
	for i, e := range tab.Tensors {
		data := make([]float32, e.Length/4)
		for d := data; len(d) > 0; {
			k := min(len(d), len(buf)/4)
			if _, err := io.ReadFull(br, buf[:4*k]); err != nil {
				return nil, bad("tensor %q: truncated data: %v", e.Name, err)
			}
			for j := range d[:k] {
				d[j] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*j:]))
			}
			d = d[k:]
		}
		shape := e.Shape
		if len(shape) == 0 {
			shape = nil
		}
		out[i] = Tensor{Name: e.Name, Shape: shape, Data: data}
	}
	if n, _ := br.Read(buf[:1]); n != 0 {
		return nil, bad("data continues past the declared size %d", size)
	}
	return out, nil
}
