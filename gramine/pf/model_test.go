package pf

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestRandomOperations runs random writes, truncations, flushes and reopens
// against a plain byte slice, with a tiny cache so that nodes are evicted
// and flushed in the middle of operations.
func TestRandomOperations(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	p := filepath.Join(t.TempDir(), "m.pf")
	of, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	opts := &Options{CacheNodes: 8}
	f, err := Create(of, attackKey, "m.pf", opts)
	if err != nil {
		t.Fatal(err)
	}
	var model []byte
	const maxSize = 2 * dataPerMHT * NodeSize
	for i := range 300 {
		switch op := rng.IntN(10); {
		case op < 6:
			off := rng.IntN(min(len(model)+20000, maxSize))
			n := 1 + rng.IntN(30000)
			data := make([]byte, n)
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
			if _, err := f.WriteAt(data, int64(off)); err != nil {
				t.Fatalf("op %d: write: %v", i, err)
			}
			if off+n > len(model) {
				model = append(model, make([]byte, off+n-len(model))...)
			}
			copy(model[off:], data)
		case op < 8:
			s := rng.IntN(len(model) + 10000)
			if err := f.Truncate(int64(s)); err != nil {
				t.Fatalf("op %d: truncate: %v", i, err)
			}
			if s < len(model) {
				model = model[:s]
			} else {
				model = append(model, make([]byte, s-len(model))...)
			}
		case op < 9:
			if err := f.Close(); err != nil {
				t.Fatalf("op %d: close: %v", i, err)
			}
			fi, _ := of.Stat()
			if f, err = OpenFile(of, fi.Size(), attackKey, "m.pf", opts); err != nil {
				t.Fatalf("op %d: reopen: %v", i, err)
			}
		default:
			off := rng.IntN(len(model) + 1)
			b := make([]byte, rng.IntN(20000))
			n, err := f.ReadAt(b, int64(off))
			if err != nil && err != io.EOF {
				t.Fatalf("op %d: read: %v", i, err)
			}
			if !bytes.Equal(b[:n], model[off:off+n]) || n != min(len(b), len(model)-off) {
				t.Fatalf("op %d: read %d at %d differs from the model", i, n, off)
			}
		}
		if f.Size() != int64(len(model)) {
			t.Fatalf("op %d: size %d, model %d", i, f.Size(), len(model))
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	got, err := openAndRead(b, attackKey, "m.pf")
	if err != nil || !bytes.Equal(got, model) {
		t.Fatalf("final read: %v", err)
	}
}

// refPlain is the plaintext of the reference file of n bytes, made as the
// reference README says.
func refPlain(n int) []byte {
	out := make([]byte, 0, n+32)
	for c := 0; len(out) < n; c++ {
		s := sha256.Sum256(fmt.Appendf(nil, "veil-gramine-pf-vector-%d-%d", n, c))
		out = append(out, s[:]...)
	}
	return out[:n]
}

// TestWriterLargeReferenceSizes writes the big reference plaintexts (more
// MHT nodes than fit under the root) and checks size and content.
func TestWriterLargeReferenceSizes(t *testing.T) {
	dir := refDir(t)
	key := refKey(t, dir)
	for _, r := range refFiles(t, dir) {
		if r.plain != nil {
			continue
		}
		plain := refPlain(int(r.size))
		if s := sha256.Sum256(plain); fmt.Sprintf("%x", s) != r.hash {
			t.Fatalf("%s: regenerated plaintext does not match the README", r.name)
		}
		bound := "data/" + r.name + ".pf"
		out := writeFile(t, filepath.Join(t.TempDir(), r.name+".pf"), key, bound, plain, nil)
		fi, err := os.Stat(filepath.Join(dir, r.name+".pf"))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(out)) != fi.Size() {
			t.Errorf("%s: veil wrote %d bytes, Gramine %d", r.name, len(out), fi.Size())
		}
		got, err := openAndRead(out, key, bound)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%s: read back: %v", r.name, err)
		}
	}
}

// TestRename rebinds a file: it opens under the new path only.
func TestRename(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.pf")
	plain := testPlain(50000)
	writeFile(t, p, attackKey, "dir/old.pf", plain, nil)
	of, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	fi, _ := of.Stat()
	f, err := OpenFile(of, fi.Size(), attackKey, "dir/old.pf", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Rename("./dir/../other/new.pf"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, _ := os.ReadFile(p)
	if _, err := openAndRead(b, attackKey, "dir/old.pf"); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("old path after rename: %v", err)
	}
	if got, err := openAndRead(b, attackKey, "other/new.pf"); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("new path after rename: %v", err)
	}
}

// TestVersion1 reads a file in the version-1 layout (no flags byte: the
// encrypted part one byte earlier), made here from a version-2 file the way
// Gramine's migration undoes it, and rewrites it as version 2.
func TestVersion1(t *testing.T) {
	plain := testPlain(20000)
	p := filepath.Join(t.TempDir(), "v1.pf")
	b := writeFile(t, p, attackKey, "v1.pf", plain, nil)
	copy(b[offFlags:], b[plainSize:plainSize+encSize])
	b[offMajor] = 1
	clear(b[offFlags+encSize : NodeSize])
	if got, err := openAndRead(b, attackKey, "v1.pf"); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("version 1: %v", err)
	}
	os.WriteFile(p, b, 0o600)
	of, _ := os.OpenFile(p, os.O_RDWR, 0)
	defer of.Close()
	f, err := OpenFile(of, int64(len(b)), attackKey, "v1.pf", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(p)
	if b2[offMajor] != versionMajor {
		t.Fatalf("closing a version-1 file opened for writing left version %d", b2[offMajor])
	}
	if got, err := openAndRead(b2, attackKey, "v1.pf"); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("after migration: %v", err)
	}
}
