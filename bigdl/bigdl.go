// Package bigdl reads files written by BigDL PPML's BigDLEncrypt in its
// AES/CBC/PKCS5Padding crypto mode (docs/formats/bigdl.md), so that data
// encrypted by BigDL can be moved into sealed files.
//
// A file is checked completely before any plaintext is released: its
// header, its initialization vector (which BigDL derives from the key),
// its padding and its HMAC-SHA256. What the format itself leaves
// unprotected cannot be recovered here: its MAC does not cover the header
// or the last 1-16 bytes of ciphertext, the IV repeats for every file under
// one data key, and there is no binding of a file to its name. The package
// offers no writer: new data goes into sealed files.
package bigdl

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Layout constants.
const (
	Version    = 0x80
	HeaderSize = 1 + 8 + aes.BlockSize
	MACSize    = sha256.Size
	KeySize    = 32 // bytes of the data-key string used: 16 MAC key, 16 AES key
)

// Errors.
var (
	ErrFormat = errors.New("not a BigDL encrypted file")
	ErrAuth   = errors.New("BigDL file failed authentication (wrong data key, or the file was altered)")
	ErrKey    = errors.New("BigDL data key must be at least 32 bytes")
)

// Header is a file's header.
type Header struct {
	Version byte
	Time    time.Time // when the file was written (seconds)
	IV      [aes.BlockSize]byte
}

// ParseHeader parses the first HeaderSize bytes of a file.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: shorter than its %d-byte header", ErrFormat, HeaderSize)
	}
	h.Version = b[0]
	if h.Version != Version {
		return h, fmt.Errorf("%w: version byte %#02x, want %#02x", ErrFormat, h.Version, Version)
	}
	h.Time = time.Unix(int64(binary.BigEndian.Uint64(b[1:9])), 0).UTC()
	copy(h.IV[:], b[9:HeaderSize])
	return h, nil
}

// Keys splits a data key as BigDL does: the first 16 bytes of the key
// string are the HMAC key, the next 16 the AES-128 key.
func Keys(dataKey []byte) (macKey, encKey []byte, err error) {
	if len(dataKey) < KeySize {
		return nil, nil, ErrKey
	}
	return dataKey[:16], dataKey[16:32], nil
}

// DerivedIV is the IV BigDL derives from the MAC key: java.util.Random
// seeded with the byte-wrapped sum of the key's signed bytes, 16 draws of
// nextInt(256) - 128.
func DerivedIV(macKey []byte) [aes.BlockSize]byte {
	var sum int8
	for _, b := range macKey {
		sum += int8(b)
	}
	r := newJavaRandom(int64(sum))
	var iv [aes.BlockSize]byte
	for i := range iv {
		iv[i] = byte(r.nextInt256() - 128)
	}
	return iv
}

// javaRandom is java.util.Random's 48-bit linear congruential generator.
type javaRandom struct{ seed uint64 }

const (
	jrMult = 0x5DEECE66D
	jrMask = 1<<48 - 1
)

func newJavaRandom(seed int64) *javaRandom {
	return &javaRandom{seed: (uint64(seed) ^ jrMult) & jrMask}
}

func (r *javaRandom) next(bits uint) int32 {
	r.seed = (r.seed*jrMult + 0xB) & jrMask
	return int32(int64(r.seed) >> (48 - bits))
}

// nextInt256 is nextInt(256): a power-of-two bound takes the high bits.
func (r *javaRandom) nextInt256() int32 {
	return int32((256 * int64(r.next(31))) >> 31)
}

// Decrypt authenticates the BigDL file r (size bytes) under dataKey and
// only then writes its plaintext to w. It returns the file's header.
func Decrypt(r io.ReaderAt, size int64, dataKey []byte, w io.Writer) (Header, error) {
	macKey, encKey, err := Keys(dataKey)
	if err != nil {
		return Header{}, err
	}
	hb := make([]byte, HeaderSize)
	if _, err := r.ReadAt(hb, 0); err != nil {
		return Header{}, fmt.Errorf("%w: reading the header: %v", ErrFormat, err)
	}
	h, err := ParseHeader(hb)
	if err != nil {
		return h, err
	}
	ctLen := size - HeaderSize - MACSize
	if ctLen < aes.BlockSize || ctLen%aes.BlockSize != 0 {
		return h, fmt.Errorf("%w: %d bytes of ciphertext is not a positive multiple of %d", ErrFormat, ctLen, aes.BlockSize)
	}
	blk, err := aes.NewCipher(encKey)
	if err != nil {
		return h, err
	}
	tag := make([]byte, MACSize)
	if _, err := r.ReadAt(tag, size-MACSize); err != nil {
		return h, fmt.Errorf("reading the MAC: %w", err)
	}
	// The last block first: its padding gives the plaintext length, and the
	// MAC covers that many bytes of ciphertext.
	tail := make([]byte, 2*aes.BlockSize)
	prev := h.IV[:]
	if ctLen > aes.BlockSize {
		if _, err := r.ReadAt(tail[:aes.BlockSize], HeaderSize+ctLen-2*aes.BlockSize); err != nil {
			return h, err
		}
		prev = tail[:aes.BlockSize]
	}
	if _, err := r.ReadAt(tail[aes.BlockSize:], HeaderSize+ctLen-aes.BlockSize); err != nil {
		return h, err
	}
	last := make([]byte, aes.BlockSize)
	cipher.NewCBCDecrypter(blk, prev).CryptBlocks(last, tail[aes.BlockSize:])
	pad := int64(last[aes.BlockSize-1])
	badPad := pad < 1 || pad > aes.BlockSize
	if !badPad {
		for _, b := range last[aes.BlockSize-int(pad):] {
			if int64(b) != pad {
				badPad = true
			}
		}
	}
	if badPad {
		pad = 1 // still check the MAC, and report one error either way
	}
	ptLen := ctLen - pad
	m := hmac.New(sha256.New, macKey)
	if _, err := io.Copy(m, io.NewSectionReader(r, HeaderSize, ptLen)); err != nil {
		return h, err
	}
	ok := hmac.Equal(m.Sum(nil), tag)
	if !ok || badPad || DerivedIV(macKey) != h.IV {
		return h, ErrAuth
	}
	// Authenticated: decrypt in chunks.
	dec := cipher.NewCBCDecrypter(blk, h.IV[:])
	buf := make([]byte, 1<<20)
	sr := io.NewSectionReader(r, HeaderSize, ctLen)
	for left := ptLen; left > 0; {
		n, err := io.ReadFull(sr, buf[:min(int64(len(buf)), ctLen-(ptLen-left))])
		if err != nil {
			return h, err
		}
		dec.CryptBlocks(buf[:n], buf[:n])
		out := buf[:min(int64(n), left)]
		if _, err := w.Write(out); err != nil {
			return h, err
		}
		left -= int64(len(out))
	}
	clear(buf)
	return h, nil
}
