package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

// slowMul is the textbook shift-and-reduce multiplication with branches,
// used only as a reference for the constant-time one.
func slowMul(a, b byte) byte {
	var p byte
	for b != 0 {
		if b&1 != 0 {
			p ^= a
		}
		carry := a&0x80 != 0
		a <<= 1
		if carry {
			a ^= 0x1b
		}
		b >>= 1
	}
	return p
}

func TestFieldArithmetic(t *testing.T) {
	// Known AES-field products (FIPS-197 section 4.2).
	if got := mul(0x57, 0x83); got != 0xc1 {
		t.Fatalf("0x57*0x83 = %#x, want 0xc1", got)
	}
	if got := mul(0x57, 0x13); got != 0xfe {
		t.Fatalf("0x57*0x13 = %#x, want 0xfe", got)
	}
	for a := range 256 {
		for b := range 256 {
			if mul(byte(a), byte(b)) != slowMul(byte(a), byte(b)) {
				t.Fatalf("mul(%d,%d) differs from reference", a, b)
			}
		}
		if a != 0 && mul(byte(a), inv(byte(a))) != 1 {
			t.Fatalf("inv(%d) is not an inverse", a)
		}
	}
	if inv(0) != 0 {
		t.Fatal("inv(0) != 0")
	}
}

func TestSplitCombineAllSubsets(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	const n, k = 5, 3
	shares, err := Split(secret, n, k)
	if err != nil {
		t.Fatal(err)
	}
	for mask := 1; mask < 1<<n; mask++ {
		var sub [][]byte
		for i := range n {
			if mask&(1<<i) != 0 {
				sub = append(sub, shares[i])
			}
		}
		got, err := Combine(sub)
		if err != nil {
			t.Fatal(err)
		}
		if len(sub) >= k && !bytes.Equal(got, secret) {
			t.Fatalf("subset %05b: wrong secret", mask)
		}
		if len(sub) < k && bytes.Equal(got, secret) {
			t.Fatalf("subset %05b below threshold recovered the secret", mask)
		}
	}
}

// TestBelowThresholdRevealsNothing checks perfect secrecy on one byte: with
// k-1 fixed shares, every secret value is consistent with them, so the
// shares carry no information about the secret.
func TestBelowThresholdRevealsNothing(t *testing.T) {
	shares, err := Split([]byte{0x42}, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[byte]bool{}
	for y := range 256 {
		third := []byte{3, byte(y)}
		got, err := Combine([][]byte{shares[0], shares[1], third})
		if err != nil {
			t.Fatal(err)
		}
		seen[got[0]] = true
	}
	if len(seen) != 256 {
		t.Fatalf("two shares constrain the secret to %d values, want all 256", len(seen))
	}
}

func TestBadParamsAndShares(t *testing.T) {
	for _, c := range []struct{ n, k int }{{3, 0}, {2, 3}, {256, 2}} {
		if _, err := Split([]byte{1}, c.n, c.k); !errors.Is(err, ErrParams) {
			t.Errorf("Split n=%d k=%d: got %v, want ErrParams", c.n, c.k, err)
		}
	}
	if _, err := Split(nil, 3, 2); !errors.Is(err, ErrEmptySecret) {
		t.Errorf("empty secret: %v", err)
	}
	shares, _ := Split([]byte("secret"), 3, 2)
	bad := [][][]byte{
		nil,
		{shares[0], shares[0]},
		{shares[0], shares[1][:3]},
		{{0, 1, 2, 3, 4, 5, 6}, shares[1]},
		{{1}},
	}
	for i, b := range bad {
		if _, err := Combine(b); !errors.Is(err, ErrShares) {
			t.Errorf("case %d: got %v, want ErrShares", i, err)
		}
	}
}

func FuzzCombine(f *testing.F) {
	shares, _ := Split([]byte("root key"), 3, 2)
	f.Add(shares[0], shares[1])
	f.Add([]byte{}, []byte{1})
	f.Add([]byte{1, 2}, []byte{1, 3})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		got, err := Combine([][]byte{a, b})
		if err == nil && len(got) != len(a)-1 {
			t.Fatalf("secret length %d from share length %d", len(got), len(a))
		}
	})
}

func TestCommitmentBindsShare(t *testing.T) {
	parts, err := Split(bytes.Repeat([]byte{0x42}, 32), 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	c := Commitment(parts[0])
	for i := range parts[0] {
		p := bytes.Clone(parts[0])
		p[i] ^= 1
		if bytes.Equal(Commitment(p), c) {
			t.Fatalf("byte %d changed, commitment unchanged", i)
		}
	}
	if bytes.Equal(Commitment(parts[1]), c) {
		t.Fatal("two shares with one commitment")
	}
}
