package seal

import (
	"bytes"
	"io"
	"testing"
)

// syncCounter is storage that counts Sync calls.
type syncCounter struct {
	memFile
	syncs int
}

func (s *syncCounter) Sync() error { s.syncs++; return nil }

// TestCommitIsCompleteWithoutSync: Commit leaves a file that opens with
// everything written, without syncing the storage; Sync then syncs once
// even with nothing left to write; Close commits without syncing.
func TestCommitIsCompleteWithoutSync(t *testing.T) {
	k := testKey(t)
	st := &syncCounter{}
	f, err := Create(st, &Options{SegmentSize: MinSegmentSize}, k)
	if err != nil {
		t.Fatal(err)
	}
	st.syncs = 0 // what Create did
	data := bytes.Repeat([]byte("commit "), 3000)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if st.syncs != 0 {
		t.Fatalf("Commit synced the storage %d times", st.syncs)
	}
	// What Commit left is a complete file: open a copy of the storage.
	cp := &memFile{b: append([]byte(nil), st.b...)}
	g, err := Open(cp, k, nil)
	if err != nil {
		t.Fatalf("a committed file does not open: %v", err)
	}
	got, _ := io.ReadAll(io.NewSectionReader(g, 0, g.Size()))
	if !bytes.Equal(got, data) {
		t.Fatal("a committed file reads back differently")
	}
	// Sync after Commit: nothing to write, but the storage is synced.
	if err := f.Sync(); err != nil || st.syncs != 1 {
		t.Fatalf("Sync after Commit: %v, %d syncs, want 1", err, st.syncs)
	}
	if err := f.Sync(); err != nil || st.syncs != 1 {
		t.Fatalf("a second Sync with nothing new: %v, %d syncs, want 1", err, st.syncs)
	}
	if _, err := f.WriteAt([]byte("more"), 10); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil || st.syncs != 1 {
		t.Fatalf("Close: %v, %d syncs, want still 1", err, st.syncs)
	}
	h, err := Open(st, k, nil)
	if err != nil {
		t.Fatalf("a closed file does not open: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := h.ReadAt(buf, 10); err != nil || string(buf) != "more" {
		t.Fatalf("write before Close lost: %q %v", buf, err)
	}
}
