package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// KeySize is the size of DEKs and local wrap keys: 256 bits.
const KeySize = 32

// fileKeys are the subkeys of one file, derived from its DEK and file ID.
type fileKeys struct {
	seg    cipher.AEAD
	header [32]byte
	commit [32]byte
	place  [32]byte // version 2: MAC key of the place block
}

func deriveKeys(dek []byte, fileID *[FileIDLen]byte) (*fileKeys, error) {
	if len(dek) != KeySize {
		return nil, fmt.Errorf("%w: data key of %d bytes", ErrWrongKey, len(dek))
	}
	k := &fileKeys{}
	segKey, err := hkdf.Key(sha256.New, dek, fileID[:], "veil/seal/v1/segment", KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(segKey)
	hk, err := hkdf.Key(sha256.New, dek, fileID[:], "veil/seal/v1/header", 32)
	if err != nil {
		return nil, err
	}
	ck, err := hkdf.Key(sha256.New, dek, fileID[:], "veil/seal/v1/commit", 32)
	if err != nil {
		return nil, err
	}
	pk, err := hkdf.Key(sha256.New, dek, fileID[:], "veil/seal/v2/place", 32)
	if err != nil {
		return nil, err
	}
	copy(k.header[:], hk)
	copy(k.commit[:], ck)
	copy(k.place[:], pk)
	clear(hk)
	clear(ck)
	clear(pk)
	block, err := aes.NewCipher(segKey)
	if err != nil {
		return nil, err
	}
	if k.seg, err = cipher.NewGCM(block); err != nil {
		return nil, err
	}
	return k, nil
}

// unwrapDEK tries every slot of h with u and returns the first DEK that opens.
func unwrapDEK(h *Header, u KeyUnwrapper) ([]byte, error) {
	if u == nil {
		return nil, fmt.Errorf("%w: no key given", ErrWrongKey)
	}
	var firstErr error
	for _, s := range h.Slots {
		dek, err := u.UnwrapKey(s, h.binding())
		if err == nil {
			if len(dek) != KeySize {
				return nil, fmt.Errorf("%w: key slot %s:%s gave a key of %d bytes", ErrWrongKey, s.Kind, s.KeyID, len(dek))
			}
			return dek, nil
		}
		if !errors.Is(err, ErrSlotMismatch) && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	names := make([]string, len(h.Slots))
	for i, s := range h.Slots {
		names[i] = s.Kind + ":" + s.KeyID
	}
	return nil, fmt.Errorf("%w (the file's key slots: %s)", ErrWrongKey, strings.Join(names, ", "))
}

// Keys combines several unwrappers: a slot is offered to each in turn.
type Keys []KeyUnwrapper

// UnwrapKey implements KeyUnwrapper.
func (ks Keys) UnwrapKey(s Slot, binding []byte) ([]byte, error) {
	var firstErr error
	for _, k := range ks {
		dek, err := k.UnwrapKey(s, binding)
		if err == nil {
			return dek, nil
		}
		if !errors.Is(err, ErrSlotMismatch) && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return nil, ErrSlotMismatch
}

// FileKey is a local 256-bit wrap key (slot kind "file"). Its key id is a
// fingerprint of the key, never the path it was loaded from.
type FileKey struct {
	key  [KeySize]byte
	aead cipher.AEAD
	id   string
}

const (
	fileSlotKind  = "file"
	keyFilePrefix = "VEIL-KEY-1-"
)

// NewFileKey makes a FileKey from 32 bytes of key material.
func NewFileKey(k []byte) (*FileKey, error) {
	if len(k) != KeySize {
		return nil, fmt.Errorf("wrap key must be %d bytes, got %d", KeySize, len(k))
	}
	fk := &FileKey{}
	copy(fk.key[:], k)
	block, err := aes.NewCipher(fk.key[:])
	if err != nil {
		return nil, err
	}
	if fk.aead, err = cipher.NewGCM(block); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(append([]byte("veil/seal/v1/key-id\x00"), fk.key[:]...))
	fk.id = "sha256:" + hex.EncodeToString(sum[:8])
	return fk, nil
}

// GenerateFileKey returns a new random wrap key.
func GenerateFileKey() (*FileKey, error) {
	var k [KeySize]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	defer clear(k[:])
	return NewFileKey(k[:])
}

// ID is the key's fingerprint as stored in slots ("sha256:" + 16 hex digits).
func (k *FileKey) ID() string { return k.id }

// MarshalText encodes the key as written by `veil gen-key`: one line,
// "VEIL-KEY-1-" followed by 64 hex digits.
func (k *FileKey) MarshalText() ([]byte, error) {
	return []byte(keyFilePrefix + hex.EncodeToString(k.key[:]) + "\n"), nil
}

// ParseFileKey reads a key file's content: the text form of MarshalText, or
// exactly 32 raw bytes.
func ParseFileKey(b []byte) (*FileKey, error) {
	if len(b) == KeySize && !bytes.HasPrefix(b, []byte(keyFilePrefix[:KeySize/4])) {
		return NewFileKey(b)
	}
	s := strings.TrimSpace(string(b))
	if !strings.HasPrefix(s, keyFilePrefix) {
		return nil, errors.New("not a veil key file (want a line starting with " + keyFilePrefix + " or 32 raw bytes)")
	}
	raw, err := hex.DecodeString(s[len(keyFilePrefix):])
	if err != nil || len(raw) != KeySize {
		return nil, errors.New("key file is damaged: want " + keyFilePrefix + " followed by 64 hex digits")
	}
	defer clear(raw)
	return NewFileKey(raw)
}

// LoadFileKey reads a key file written by `veil gen-key`.
func LoadFileKey(path string) (*FileKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading key: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("reading key %s: %w", path, err)
	}
	defer clear(b)
	k, err := ParseFileKey(b)
	if err != nil {
		return nil, fmt.Errorf("reading key %s: %w", path, err)
	}
	return k, nil
}

func (k *FileKey) slotAAD(binding []byte) []byte {
	aad := append([]byte("veil/seal/v1/file-slot\x00"), binding...)
	return append(aad, k.id...)
}

// WrapKey implements KeyWrapper. The nonce is derived from the key and the
// binding, which holds the file's random 128-bit ID: a file's DEK is wrapped
// once per key, so no (key, nonce) pair ever encrypts two different DEKs,
// and sealing is reproducible from the file's randomness alone.
func (k *FileKey) WrapKey(dek, binding []byte) (Slot, error) {
	m := hmac.New(sha256.New, k.key[:])
	m.Write([]byte("veil/seal/v1/slot-nonce\x00"))
	m.Write(binding)
	nonce := m.Sum(nil)[:nonceLen:nonceLen]
	wrapped := k.aead.Seal(nonce, nonce, dek, k.slotAAD(binding))
	return Slot{Kind: fileSlotKind, KeyID: k.id, Wrapped: wrapped}, nil
}

// UnwrapKey implements KeyUnwrapper.
func (k *FileKey) UnwrapKey(s Slot, binding []byte) ([]byte, error) {
	if s.Kind != fileSlotKind || s.KeyID != k.id {
		return nil, ErrSlotMismatch
	}
	if len(s.Wrapped) != nonceLen+KeySize+tagLen {
		return nil, integrityErr(0, "key slot %s:%s has a wrapped key of %d bytes", s.Kind, s.KeyID, len(s.Wrapped))
	}
	dek, err := k.aead.Open(nil, s.Wrapped[:nonceLen], s.Wrapped[nonceLen:], k.slotAAD(binding))
	if err != nil {
		return nil, integrityErr(0, "key slot %s:%s failed authentication (slot altered or moved from another file)", s.Kind, s.KeyID)
	}
	return dek, nil
}
