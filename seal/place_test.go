package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func bound(mount, path string) *Options {
	return &Options{SegmentSize: testSeg, Place: &Place{Mount: MountID(mount), Path: path}}
}

// TestPlaceBinding: a bound file opens at its place and where the place is
// not known; at another path or in another mount it is an integrity error
// naming the path it is bound to; an unbound (version 1) file opens
// anywhere.
func TestPlaceBinding(t *testing.T) {
	k := testKey(t)
	plain := randBytes(3*testSeg + 5)
	sealed := sealBytes(t, plain, bound("/data", "a/x.csv"), k)
	if sealed[8] != Version2 {
		t.Fatalf("bound file has version %d", sealed[8])
	}
	for _, o := range []*Options{bound("/data", "a/x.csv"), nil} {
		f, err := Open(memStorage(sealed), k, o)
		if err != nil {
			t.Fatalf("open at %v: %v", o, err)
		}
		got := make([]byte, len(plain))
		if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("read: %v", err)
		}
		f.Close()
		r, err := NewReader(bytes.NewReader(sealed), k, o)
		if err != nil {
			t.Fatalf("stream at %v: %v", o, err)
		}
		r.Close()
	}
	for _, o := range []*Options{bound("/data", "a/y.csv"), bound("/other", "a/x.csv")} {
		_, err := Open(memStorage(sealed), k, o)
		if !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), `"a/x.csv"`) {
			t.Fatalf("open as %s in %x: %v; want an integrity error naming a/x.csv", o.Place.Path, o.Place.Mount, err)
		}
		if _, err := NewReader(bytes.NewReader(sealed), k, o); !errors.Is(err, ErrIntegrity) {
			t.Fatalf("stream as %s: %v", o.Place.Path, err)
		}
	}
	v1 := sealBytes(t, plain, &Options{SegmentSize: testSeg}, k)
	if f, err := Open(memStorage(v1), k, bound("/data", "anything")); err != nil {
		t.Fatalf("unbound file at a place: %v", err)
	} else {
		f.Close()
	}
}

// TestPlaceBlockAttacks: the host edits the place block, or pastes in the
// place block of another file bound where it wants (same key): both fail
// authentication.
func TestPlaceBlockAttacks(t *testing.T) {
	k := testKey(t)
	a := sealBytes(t, []byte("file a"), bound("/data", "a.csv"), k)
	b := sealBytes(t, []byte("file b"), bound("/data", "b.csv"), k)
	ha, _ := ParseHeader(bytes.NewReader(a))
	hb, _ := ParseHeader(bytes.NewReader(b))
	// Rewrite a's path to b.csv in the clear.
	edited := bytes.Clone(a)
	copy(edited[ha.placeOff()+1+len(ha.Place.Mount)+2:], "b")
	if _, err := Open(memStorage(edited), k, bound("/data", "b.csv")); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("edited place: %v", err)
	}
	// Paste b's place block (and MAC) into a.
	pasted := bytes.Clone(a)
	copy(pasted[ha.placeOff():ha.Len()], b[hb.placeOff():hb.Len()])
	if _, err := Open(memStorage(pasted), k, bound("/data", "b.csv")); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("pasted place block: %v", err)
	}
	// Downgrade to version 1: the header MAC covers the version.
	down := bytes.Clone(a)
	down[8] = Version1
	if _, err := Open(memStorage(down), k, bound("/data", "b.csv")); err == nil {
		t.Fatal("version byte lowered: opened")
	}
}

// TestRebind: re-binding rewrites the place block alone; the file opens at
// its new place and no longer at its old one; a path longer than the
// block's room is ErrPlaceFull; a version 1 file is ErrUnbound.
func TestRebind(t *testing.T) {
	k := testKey(t)
	plain := randBytes(2*testSeg + 1)
	sealed := sealBytes(t, plain, bound("/data", "old.csv"), k)
	st := memStorage(sealed)
	h, _ := ParseHeader(bytes.NewReader(sealed))
	if err := Rebind(st, k, *bound("/data", "old.csv").Place, Place{Mount: MountID("/data"), Path: "dir/new.csv"}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(st.b[:h.placeOff()], sealed[:h.placeOff()]) || !bytes.Equal(st.b[h.Len():], sealed[h.Len():]) || len(st.b) != len(sealed) {
		t.Fatal("re-binding changed bytes outside the place block")
	}
	f, err := Open(memStorage(st.b), k, bound("/data", "dir/new.csv"))
	if err != nil {
		t.Fatalf("open at the new place: %v", err)
	}
	got := make([]byte, len(plain))
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("read after re-binding: %v", err)
	}
	f.Close()
	if _, err := Open(memStorage(st.b), k, bound("/data", "old.csv")); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("open at the old place: %v", err)
	}
	if err := Rebind(st, k, *bound("/data", "dir/new.csv").Place, Place{Mount: MountID("/data"), Path: strings.Repeat("n", h.PlaceCapacity+1)}); !errors.Is(err, ErrPlaceFull) {
		t.Fatalf("too long: %v", err)
	}
	if err := Rebind(st, testKey(t), *bound("/data", "dir/new.csv").Place, Place{Mount: MountID("/data"), Path: "x"}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("another key: %v", err)
	}
	// A file that is not where the caller thinks (the host swapped it in)
	// is not re-bound.
	if err := Rebind(st, k, *bound("/data", "elsewhere.csv").Place, Place{Mount: MountID("/data"), Path: "x"}); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("re-binding a file from the wrong place: %v", err)
	}
	v1 := memStorage(sealBytes(t, plain, &Options{SegmentSize: testSeg}, k))
	if err := Rebind(v1, k, *bound("/data", "y").Place, Place{Mount: MountID("/data"), Path: "x"}); !errors.Is(err, ErrUnbound) {
		t.Fatalf("version 1: %v", err)
	}
	for _, p := range []string{"", "/abs", "a/../b", "a//b", "./a"} {
		if _, err := NewWriter(&bytes.Buffer{}, bound("/data", p), k); !errors.Is(err, ErrMalformed) {
			t.Fatalf("path %q: %v", p, err)
		}
	}
}
