package seal

import (
	"bytes"
	"io"
	mrand "math/rand/v2"
	"testing"
)

// fuzzKey is a fixed key so the fuzzer can reach past the header.
func fuzzKey() *FileKey {
	k, err := NewFileKey(bytes.Repeat([]byte{7}, KeySize))
	if err != nil {
		panic(err)
	}
	return k
}

func fuzzSeeds(f *testing.F) [][]byte {
	k := fuzzKey()
	var seeds [][]byte
	for i, n := range []int{0, 5, testSeg, 2*testSeg + 9} {
		opts := &Options{SegmentSize: testSeg, Rand: mrand.NewChaCha8([32]byte{byte(i)})}
		seeds = append(seeds, sealBytes(f, bytes.Repeat([]byte{'x'}, n), opts, k))
		// Version 2: the same with a place block.
		opts = &Options{SegmentSize: testSeg, Rand: mrand.NewChaCha8([32]byte{byte(i)}), Place: &Place{Mount: MountID("/data"), Path: "dir/f" + string(rune('a'+i))}}
		seeds = append(seeds, sealBytes(f, bytes.Repeat([]byte{'x'}, n), opts, k))
	}
	return seeds
}

// FuzzParseHeader: no panics, and parse -> marshal reproduces the bytes.
func FuzzParseHeader(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHeader(bytes.NewReader(data))
		if err != nil {
			return
		}
		m, err := h.Marshal()
		if err != nil {
			t.Fatalf("parsed header does not marshal: %v", err)
		}
		if !bytes.Equal(m, data[:h.Len()]) {
			t.Fatalf("parse -> marshal differs:\n in %x\nout %x", data[:h.Len()], m)
		}
	})
}

// FuzzCommit: the trailer parser round-trips.
func FuzzCommit(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s[len(s)-commitLen:])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, ok := parseCommit(data)
		if !ok {
			return
		}
		if !bytes.Equal(c.marshal(), data) {
			t.Fatal("commit parse -> marshal differs")
		}
	})
}

// FuzzOpen: arbitrary sealed-file bytes under a known key never panic, and
// the streaming and random-access readers agree on what they accept.
func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	k := fuzzKey()
	f.Fuzz(func(t *testing.T, data []byte) {
		streamed, serr := openBytes(data, k)
		var rerr error
		var all []byte
		if rf, err := Open(memStorage(data), k, nil); err != nil {
			rerr = err
		} else {
			all = make([]byte, rf.Size())
			if _, err := rf.ReadAt(all, 0); err != nil && !(err == io.EOF && rf.Size() == 0) {
				rerr = err
			}
		}
		if (serr == nil) != (rerr == nil) {
			t.Fatalf("readers disagree: stream %v, random access %v", serr, rerr)
		}
		if serr == nil && !bytes.Equal(streamed, all) {
			t.Fatal("readers accepted different plaintexts")
		}
	})
}
