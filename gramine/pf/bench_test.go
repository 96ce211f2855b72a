package pf

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkReadReference13MB reads Gramine's 13.5 MB reference file
// sequentially in 1 MiB reads (every node authenticated).
func BenchmarkReadReference13MB(b *testing.B) {
	dir := refDir(b)
	key := refKey(b, dir)
	raw, err := os.ReadFile(filepath.Join(dir, "f13500000.pf"))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(13500000)
	for b.Loop() {
		f, err := Open(bytes.NewReader(raw), int64(len(raw)), key, "data/f13500000.pf", nil)
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < f.Size(); off += int64(len(buf)) {
			if _, err := f.ReadAt(buf, off); err != nil && off+int64(len(buf)) < f.Size() {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkWrite13MB writes 13.5 MB sequentially in 1 MiB writes to a file
// in a temporary directory, and closes it.
func BenchmarkWrite13MB(b *testing.B) {
	plain := testPlain(13500000)
	p := filepath.Join(b.TempDir(), "w.pf")
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		of, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		f, err := Create(of, attackKey, p, nil)
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(plain); off += 1 << 20 {
			if _, err := f.WriteAt(plain[off:min(off+1<<20, len(plain))], int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		of.Close()
	}
}

// BenchmarkRawAESGCM4K is the limit: AES-128-GCM over 4 KiB blocks, a new
// key schedule per block as the format needs.
func BenchmarkRawAESGCM4K(b *testing.B) {
	var key [16]byte
	var iv [12]byte
	in := make([]byte, NodeSize)
	out := make([]byte, 0, NodeSize+16)
	b.SetBytes(NodeSize)
	for b.Loop() {
		blk, _ := aes.NewCipher(key[:])
		g, _ := cipher.NewGCM(blk)
		out = g.Seal(out[:0], iv[:], in, nil)
	}
}
