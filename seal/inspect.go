package seal

import (
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// Info describes a sealed file as far as it can be known without a key.
type Info struct {
	Version       uint8      `json:"version"`
	Algorithm     string     `json:"algorithm"`
	FileID        string     `json:"file_id"`
	SegmentSize   int        `json:"segment_size"`
	HeaderSize    int        `json:"header_size"`
	StoredSize    int64      `json:"stored_size"`
	PlaintextSize int64      `json:"plaintext_size"` // -1 if the trailer does not fit
	Segments      int64      `json:"segments"`
	Slots         []SlotInfo `json:"key_slots"`
	// BoundMount and BoundPath (version 2) are where the file is bound.
	BoundMount string `json:"bound_mount,omitempty"`
	BoundPath  string `json:"bound_path,omitempty"`
	Problem    string `json:"problem,omitempty"`
}

// SlotInfo names a key slot without its wrapped key.
type SlotInfo struct {
	Kind  string `json:"kind"`
	KeyID string `json:"key_id"`
}

// Inspect reads a sealed file's header and trailer without a key. Nothing
// it reports is authenticated.
func Inspect(path string) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return InspectReader(f, fi.Size())
}

// InspectReader is Inspect over r, a sealed file of size bytes.
func InspectReader(r io.ReaderAt, size int64) (*Info, error) {
	h, err := ParseHeader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return nil, err
	}
	info := &Info{
		Version: h.Version, Algorithm: "AES-256-GCM segments, HKDF-SHA256 subkeys",
		FileID: hex.EncodeToString(h.FileID[:]), SegmentSize: h.SegmentSize,
		HeaderSize: h.Len(), StoredSize: size, PlaintextSize: -1,
	}
	for _, s := range h.Slots {
		info.Slots = append(info.Slots, SlotInfo{Kind: s.Kind, KeyID: s.KeyID})
	}
	if h.Place != nil {
		info.BoundMount, info.BoundPath = hex.EncodeToString(h.Place.Mount), h.Place.Path
	}
	lay := layout{headerLen: int64(h.Len()), segSize: int64(h.SegmentSize)}
	cb := make([]byte, commitLen)
	if size < lay.headerLen+commitLen {
		info.Problem = "the file ends without its commit trailer (truncated)"
		return info, nil
	}
	if _, err := r.ReadAt(cb, size-commitLen); err != nil {
		return nil, fmt.Errorf("reading commit trailer: %w", err)
	}
	c, ok := parseCommit(cb)
	switch {
	case !ok:
		info.Problem = "no commit trailer at the end (truncated, extended or damaged)"
	case c.Size > 1<<62 || lay.fileLen(int64(c.Size)) != size:
		info.Problem = "the trailer's size does not match the file's length (truncated or extended)"
	default:
		info.PlaintextSize = int64(c.Size)
		info.Segments = lay.segments(int64(c.Size))
	}
	return info, nil
}

// SizeFromStored returns the plaintext size of a sealed file with header h
// that is stored in n bytes, or an error if no plaintext size gives that
// length. It reads nothing and authenticates nothing: it is for listings
// (stat) of files that are not open.
func SizeFromStored(h *Header, n int64) (int64, error) {
	lay := layout{headerLen: int64(h.Len()), segSize: int64(h.SegmentSize)}
	rest := n - lay.headerLen - commitLen
	if rest < 0 {
		return 0, integrityErr(n, "file ends without its commit trailer (truncated)")
	}
	per := lay.segSize + recordOverhead + tableEntryLen
	segs := (rest + per - 1) / per
	size := rest - segs*(recordOverhead+tableEntryLen)
	if size < 0 || lay.segments(size) != segs || lay.fileLen(size) != n {
		return 0, integrityErr(n, "stored length %d matches no plaintext size (truncated or extended)", n)
	}
	return size, nil
}
