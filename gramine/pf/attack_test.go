package pf

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
)

// detRand is a deterministic byte stream (SHA-256 in counter mode), for
// golden files and reproducible attacks.
type detRand struct {
	seed string
	n    uint64
	buf  []byte
}

func (r *detRand) Read(p []byte) (int, error) {
	for len(r.buf) < len(p) {
		s := sha256.Sum256([]byte(r.seed + string(rune(r.n>>16)) + string(rune(r.n&0xffff))))
		r.buf = append(r.buf, s[:]...)
		r.n++
	}
	copy(p, r.buf)
	r.buf = r.buf[len(p):]
	return len(p), nil
}

func testPlain(n int) []byte {
	b := make([]byte, n)
	r := &detRand{seed: "plaintext"}
	r.Read(b)
	return b
}

var attackKey = Key{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

// attackFile is 2 MHT nodes and a partial third data group: nodes 0
// (metadata), 1 (root MHT), 2-97 (data), 98 (MHT), 99-194 (data), 195
// (MHT), 196-197 (data).
const attackSize = mdDataSize + (2*dataPerMHT+2)*NodeSize - 100

func attackVictim(t *testing.T) ([]byte, []byte) {
	t.Helper()
	plain := testPlain(attackSize)
	b := writeFile(t, t.TempDir()+"/v.pf", attackKey, "enc/victim.pf", plain, &Options{Rand: &detRand{seed: "attack"}})
	if len(b) != 198*NodeSize {
		t.Fatalf("victim is %d nodes, want 198", len(b)/NodeSize)
	}
	return b, plain
}

// openAndRead opens b and reads it whole; it returns the first error.
func openAndRead(b []byte, key Key, path string) ([]byte, error) {
	f, err := Open(bytes.NewReader(b), int64(len(b)), key, path, nil)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(f)
}

// TestAttacks modifies a protected file in every region and checks each
// change is refused; the unmodified file must read back (so the test bites).
func TestAttacks(t *testing.T) {
	victim, plain := attackVictim(t)
	if got, err := openAndRead(victim, attackKey, "enc/victim.pf"); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("unmodified victim: %v", err)
	}
	flip := func(off int) []byte {
		b := bytes.Clone(victim)
		b[off] ^= 0x01
		return b
	}
	swap := func(a, c uint64) []byte {
		b := bytes.Clone(victim)
		na := bytes.Clone(b[a*NodeSize : (a+1)*NodeSize])
		copy(b[a*NodeSize:], b[c*NodeSize:(c+1)*NodeSize])
		copy(b[c*NodeSize:], na)
		return b
	}
	cases := []struct {
		name string
		file []byte
		path string
		want error
	}{
		{"magic", flip(3), "", ErrNotPF},
		{"major version", flip(offMajor), "", ErrUnsupported},
		{"minor version", flip(offMinor), "", ErrUnsupported},
		{"key nonce", flip(offNonce + 7), "", ErrIntegrity},
		{"metadata MAC", flip(offMAC + 15), "", ErrIntegrity},
		{"feature flags (pending write)", flip(offFlags), "", ErrUnsupported},
		{"encrypted bound path", flip(plainSize + 3), "", ErrIntegrity},
		{"encrypted size", flip(plainSize + encOffSize), "", ErrIntegrity},
		{"encrypted root key", flip(plainSize + encOffRootKey), "", ErrIntegrity},
		{"encrypted first 3 KiB", flip(plainSize + encOffData + 2000), "", ErrIntegrity},
		{"metadata padding", flip(NodeSize - 1), "", ErrIntegrity},
		{"root MHT node", flip(1*NodeSize + 100), "", ErrIntegrity},
		{"second MHT node", flip(98*NodeSize + 4000), "", ErrIntegrity},
		{"third MHT node", flip(195*NodeSize + 1), "", ErrIntegrity},
		{"first data node", flip(2 * NodeSize), "", ErrIntegrity},
		{"data node in the second group", flip(150*NodeSize + 2222), "", ErrIntegrity},
		{"last data node", flip(197*NodeSize + NodeSize - 1), "", ErrIntegrity},
		{"truncated by a node", victim[:len(victim)-NodeSize], "", ErrIntegrity},
		{"truncated mid-node", victim[:len(victim)-1000], "", ErrIntegrity},
		{"truncated to the metadata node", victim[:NodeSize], "", ErrIntegrity},
		{"extended by a node", append(bytes.Clone(victim), make([]byte, NodeSize)...), "", ErrIntegrity},
		{"extended by a copied node", append(bytes.Clone(victim), victim[5*NodeSize:6*NodeSize]...), "", ErrIntegrity},
		{"two data nodes swapped", swap(10, 11), "", ErrIntegrity},
		{"data nodes swapped across groups", swap(3, 100), "", ErrIntegrity},
		{"two MHT nodes swapped", swap(98, 195), "", ErrIntegrity},
		{"MHT and data node swapped", swap(1, 2), "", ErrIntegrity},
		{"renamed", victim, "enc/other.pf", ErrIntegrity},
		{"moved to another directory", victim, "victim.pf", ErrIntegrity},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := c.path
			if path == "" {
				path = "enc/victim.pf"
			}
			got, err := openAndRead(c.file, attackKey, path)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if err == nil || (got != nil && bytes.Equal(got, plain)) {
				t.Fatal("modified file read back in full")
			}
		})
	}
	t.Run("wrong key", func(t *testing.T) {
		k := attackKey
		k[15] ^= 0x80
		if _, err := openAndRead(victim, k, "enc/victim.pf"); !errors.Is(err, ErrIntegrity) {
			t.Fatalf("err = %v, want ErrIntegrity", err)
		}
	})
	t.Run("node from another file under the same key", func(t *testing.T) {
		other := writeFile(t, t.TempDir()+"/o.pf", attackKey, "enc/victim.pf", testPlain(attackSize), nil)
		b := bytes.Clone(victim)
		copy(b[50*NodeSize:51*NodeSize], other[50*NodeSize:])
		if _, err := openAndRead(b, attackKey, "enc/victim.pf"); !errors.Is(err, ErrIntegrity) {
			t.Fatalf("err = %v, want ErrIntegrity", err)
		}
	})
}

// TestFailureIsSticky: once a node fails, the file refuses further use.
func TestFailureIsSticky(t *testing.T) {
	victim, _ := attackVictim(t)
	b := bytes.Clone(victim)
	b[150*NodeSize] ^= 1
	f, err := Open(bytes.NewReader(b), int64(len(b)), attackKey, "enc/victim.pf", nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := f.ReadAt(buf, mdDataSize+147*NodeSize); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("read of the modified node: %v", err)
	}
	if _, err := f.ReadAt(buf, 0); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("read after failure: %v, want the integrity error again", err)
	}
}
