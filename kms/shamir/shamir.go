// Package shamir splits a secret into n shares so that any k of them
// recover it and fewer reveal nothing about it (Shamir's secret sharing over
// GF(2^8), the AES field, one polynomial per secret byte).
//
// Field arithmetic runs in constant time: no table lookups indexed by secret
// values and no branches on them, so the timing of Split and Combine does not
// depend on the secret or the shares. What it does not protect against: a
// share holder who hands in a wrong share makes Combine return a wrong secret
// (callers check the result, e.g. with an authenticated blob), and shares are
// not themselves encrypted or authenticated.
package shamir

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
)

// Errors returned by Split and Combine.
var (
	ErrParams      = errors.New("invalid sharing parameters")
	ErrShares      = errors.New("invalid shares")
	ErrEmptySecret = errors.New("empty secret")
)

// mul multiplies in GF(2^8) modulo x^8+x^4+x^3+x+1 without branches.
func mul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= a & -(b & 1)
		hi := -(a >> 7)
		a = (a << 1) ^ (0x1b & hi)
		b >>= 1
	}
	return p
}

// inv returns a^254 = a^-1 (and 0 for 0), in constant time.
func inv(a byte) byte {
	// 254 = 0b11111110: square-and-multiply with a fixed sequence.
	r := byte(1)
	x := a
	for i := range 8 {
		x2 := x
		if i > 0 { // fixed schedule, independent of a
			r = mul(r, x2)
		}
		x = mul(x, x)
	}
	return r
}

// Split returns n shares of secret, any k of which recover it. Each share is
// one x-coordinate byte (1..n) followed by len(secret) bytes.
func Split(secret []byte, n, k int) ([][]byte, error) {
	return split(rand.Reader, secret, n, k)
}

func split(rnd io.Reader, secret []byte, n, k int) ([][]byte, error) {
	if len(secret) == 0 {
		return nil, ErrEmptySecret
	}
	if k < 1 || n < k || n > 255 {
		return nil, fmt.Errorf("%w: need 1 <= threshold (%d) <= shares (%d) <= 255", ErrParams, k, n)
	}
	shares := make([][]byte, n)
	for i := range shares {
		shares[i] = make([]byte, 1+len(secret))
		shares[i][0] = byte(i + 1)
	}
	coef := make([]byte, k)
	defer clear(coef)
	for j, s := range secret {
		coef[0] = s
		if _, err := io.ReadFull(rnd, coef[1:]); err != nil {
			return nil, fmt.Errorf("reading randomness: %w", err)
		}
		for i := range shares {
			x := shares[i][0]
			// Horner's rule.
			var y byte
			for c := k - 1; c >= 0; c-- {
				y = mul(y, x) ^ coef[c]
			}
			shares[i][1+j] = y
		}
	}
	return shares, nil
}

// Combine recovers the secret from k or more shares made by Split with
// threshold k. Given fewer than k shares (or foreign ones) it returns an
// unrelated value: the caller must authenticate the result.
func Combine(shares [][]byte) ([]byte, error) {
	if len(shares) == 0 {
		return nil, fmt.Errorf("%w: no shares", ErrShares)
	}
	size := len(shares[0])
	if size < 2 {
		return nil, fmt.Errorf("%w: share 1 is too short", ErrShares)
	}
	seen := [256]bool{}
	for i, s := range shares {
		if len(s) != size {
			return nil, fmt.Errorf("%w: share %d has length %d, share 1 has %d", ErrShares, i+1, len(s), size)
		}
		// x coordinates are public, so branching on them is fine.
		if s[0] == 0 || seen[s[0]] {
			return nil, fmt.Errorf("%w: share %d has a zero or repeated index %d", ErrShares, i+1, s[0])
		}
		seen[s[0]] = true
	}
	// Lagrange basis at 0: l_i = prod_{j!=i} x_j / (x_j - x_i); in GF(2^8)
	// subtraction is xor.
	basis := make([]byte, len(shares))
	for i, si := range shares {
		num, den := byte(1), byte(1)
		for j, sj := range shares {
			if i == j {
				continue
			}
			num = mul(num, sj[0])
			den = mul(den, sj[0]^si[0])
		}
		basis[i] = mul(num, inv(den))
	}
	secret := make([]byte, size-1)
	for b := range secret {
		var v byte
		for i, s := range shares {
			v ^= mul(basis[i], s[1+b])
		}
		secret[b] = v
	}
	return secret, nil
}

// Commitment returns a binding commitment to one share (its index byte
// followed by its value): SHA-256 over a domain-separation label and the
// share. A service stores the commitments of the shares it issued and
// checks each share handed in against the commitment of its index, so a
// wrong or forged share is rejected on its own, before it is combined. A
// commitment reveals nothing useful about the share (each share value is
// uniformly random), but it is only as trustworthy as the place it is
// stored: whoever can replace the commitments can make good shares fail.
func Commitment(share []byte) []byte {
	h := sha256.New()
	h.Write([]byte("veil-shamir-share-commitment-v1\n"))
	h.Write(share)
	return h.Sum(nil)
}
