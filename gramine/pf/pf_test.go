package pf

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veil-tee/veil/internal/veiltest"
)

// refDir finds the reference files written by Gramine's own library
// (shared/testdata/gramine-pf, a sibling of the repository checkout).
func refDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for range 6 {
		dir = filepath.Dir(dir)
		p := filepath.Join(dir, "shared", "testdata", "gramine-pf")
		if _, err := os.Stat(filepath.Join(p, "wrap-key.bin")); err == nil {
			return p
		}
	}
	veiltest.Skip(t, "Gramine reference files not found: want ../shared/testdata/gramine-pf beside the repository checkout")
	return ""
}

type refFile struct {
	name  string // fNNNNNNNN
	size  int64
	plain []byte // nil for the big ones
	hash  string // SHA-256 of the plaintext, from the README
}

func refFiles(t testing.TB, dir string) []refFile {
	t.Helper()
	rd, err := os.Open(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var out []refFile
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || len(f[0]) != 64 || !strings.HasSuffix(f[1], ".plain") {
			continue
		}
		name := strings.TrimSuffix(f[1], ".plain")
		var r refFile
		r.name, r.hash = name, f[0]
		if _, err := fmt.Sscanf(name, "f%d", &r.size); err != nil {
			t.Fatalf("README names %s", f[1])
		}
		if b, err := os.ReadFile(filepath.Join(dir, f[1])); err == nil {
			r.plain = b
		}
		out = append(out, r)
	}
	if len(out) != 10 {
		t.Fatalf("README lists %d reference files, want 10", len(out))
	}
	return out
}

func refKey(t testing.TB, dir string) Key {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "wrap-key.bin"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func openPath(t testing.TB, p string, key Key, bound string) (*File, error) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return Open(bytes.NewReader(b), int64(len(b)), key, bound, nil)
}

func readAll(f *File) ([]byte, error) {
	// Odd-sized reads cross node and metadata boundaries.
	var out []byte
	buf := make([]byte, 5000)
	for off := int64(0); ; {
		n, err := f.ReadAt(buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func TestCMACVectors(t *testing.T) {
	// RFC 4493, section 4.
	key, _ := hex.DecodeString("2b7e151628aed2a6abf7158809cf4f3c")
	msg, _ := hex.DecodeString("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
	for _, v := range []struct {
		n    int
		want string
	}{
		{0, "bb1d6929e95937287fa37d129b756746"},
		{16, "070a16b46b4d4144f79bdd9dd04a287c"},
		{40, "dfa66747de9ae63030ca32611497c827"},
		{64, "51f0bebf7e3b9d92fc49741779363cfe"},
	} {
		got := cmac(key, msg[:v.n])
		if hex.EncodeToString(got[:]) != v.want {
			t.Errorf("CMAC of %d bytes = %x, want %s", v.n, got, v.want)
		}
	}
}

func TestNormPath(t *testing.T) {
	for in, want := range map[string]string{
		"data/f.pf": "data/f.pf", "./data//f.pf": "data/f.pf", "/a/../b/": "/b",
		"../x": "../x", ".": "", "/..": "/", "a/./b/../c": "a/c",
	} {
		if got := NormPath(in); got != want {
			t.Errorf("NormPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReferenceFiles reads every file Gramine wrote, in full and at random
// offsets, and refuses each under another path and another key.
func TestReferenceFiles(t *testing.T) {
	dir := refDir(t)
	key := refKey(t, dir)
	for _, r := range refFiles(t, dir) {
		t.Run(r.name, func(t *testing.T) {
			p := filepath.Join(dir, r.name+".pf")
			bound := "data/" + r.name + ".pf"
			f, err := openPath(t, p, key, bound)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if f.Size() != r.size || f.Path() != bound {
				t.Fatalf("size %d path %q, want %d %q", f.Size(), f.Path(), r.size, bound)
			}
			got, err := readAll(f)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			sum := sha256.Sum256(got)
			if hex.EncodeToString(sum[:]) != r.hash {
				t.Fatalf("plaintext SHA-256 %x, want %s", sum, r.hash)
			}
			if r.plain != nil && !bytes.Equal(got, r.plain) {
				t.Fatal("plaintext differs from .plain")
			}
			// Random access: a few reads at offsets across the file.
			for _, off := range []int64{r.size / 3, r.size / 2, r.size - 1, 3071, 3072, 4096 * 97} {
				if off < 0 || off >= r.size {
					continue
				}
				b := make([]byte, 777)
				n, err := f.ReadAt(b, off)
				if err != nil && err != io.EOF {
					t.Fatalf("ReadAt %d: %v", off, err)
				}
				if !bytes.Equal(b[:n], got[off:off+int64(n)]) {
					t.Fatalf("ReadAt %d differs", off)
				}
			}
			f.Close()

			var pe *PathError
			if _, err := openPath(t, p, key, "data/other.pf"); !errors.As(err, &pe) || !errors.Is(err, ErrIntegrity) || pe.Bound != bound {
				t.Fatalf("open under another path: %v, want a PathError naming %s", err, bound)
			}
			bad := key
			bad[0] ^= 1
			if _, err := openPath(t, p, bad, bound); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("open with a wrong key: %v, want ErrIntegrity", err)
			}
		})
	}
}

// TestWriterStructureMatchesReference writes each reference plaintext with
// veil's writer and checks that the result has Gramine's structure: same
// size on disk, same plaintext header fields, zero padding, and that it
// opens under the same key and path.
func TestWriterStructureMatchesReference(t *testing.T) {
	dir := refDir(t)
	key := refKey(t, dir)
	tmp := t.TempDir()
	for _, r := range refFiles(t, dir) {
		if r.plain == nil {
			continue
		}
		ref, err := os.ReadFile(filepath.Join(dir, r.name+".pf"))
		if err != nil {
			t.Fatal(err)
		}
		bound := "data/" + r.name + ".pf"
		out := writeFile(t, filepath.Join(tmp, r.name+".pf"), key, bound, r.plain, nil)
		if len(out) != len(ref) {
			t.Errorf("%s: veil wrote %d bytes, Gramine %d", r.name, len(out), len(ref))
		}
		if !bytes.Equal(out[:offNonce], ref[:offNonce]) || out[offFlags] != ref[offFlags] {
			t.Errorf("%s: plaintext header %x/%x, Gramine %x/%x", r.name, out[:offNonce], out[offFlags], ref[:offNonce], ref[offFlags])
		}
		if !bytes.Equal(out[plainSize+encSize:NodeSize], ref[plainSize+encSize:NodeSize]) {
			t.Errorf("%s: metadata padding differs", r.name)
		}
		f, err := Open(bytes.NewReader(out), int64(len(out)), key, bound, nil)
		if err != nil {
			t.Fatalf("%s: reopening veil's file: %v", r.name, err)
		}
		got, err := readAll(f)
		if err != nil || !bytes.Equal(got, r.plain) {
			t.Fatalf("%s: reading veil's file back: %v", r.name, err)
		}
	}
}

// writeFile writes plain as a protected file at p and returns its bytes.
func writeFile(t testing.TB, p string, key Key, bound string, plain []byte, opts *Options) []byte {
	t.Helper()
	of, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	f, err := Create(of, key, bound, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Sequential writes of an odd size, as a copy would do.
	for off := 0; off < len(plain); off += 10000 {
		if _, err := f.WriteAt(plain[off:min(off+10000, len(plain))], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestModifyReferenceFile opens a file Gramine wrote for writing, changes
// bytes across node boundaries, grows and shrinks it, and reads it back.
func TestModifyReferenceFile(t *testing.T) {
	dir := refDir(t)
	key := refKey(t, dir)
	src, err := os.ReadFile(filepath.Join(dir, "f01200000.pf"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(dir, "f01200000.plain"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "f.pf")
	if err := os.WriteFile(p, src, 0o600); err != nil {
		t.Fatal(err)
	}
	bound := "data/f01200000.pf"
	of, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	f, err := OpenFile(of, int64(len(src)), key, bound, nil)
	if err != nil {
		t.Fatal(err)
	}
	patch := bytes.Repeat([]byte("veil"), 125000)
	copy(want[3000:], patch[:500000])
	if _, err := f.WriteAt(patch[:500000], 3000); err != nil {
		t.Fatal(err)
	}
	want = append(want, make([]byte, 100)...)
	want = append(want, "tail"...)
	if _, err := f.WriteAt([]byte("tail"), int64(len(want)-4)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f2, err := openPath(t, p, key, bound)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(f2)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back after modification: %v (equal %v)", err, bytes.Equal(got, want))
	}
}
