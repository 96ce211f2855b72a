package kms

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A ciphertext blob (encrypt, generate-data-key) names the key and version
// that made it; decrypt needs nothing else. Layout (docs/kms.md):
//
//	0      1 byte   format version (1)
//	1      1 byte   length L of the key id
//	2      L bytes  key id
//	2+L    4 bytes  key version, big endian
//	6+L    12 bytes AES-GCM nonce
//	18+L   rest     AES-GCM ciphertext and 16-byte tag
//
// The GCM additional data binds the blob to its key, version and owning app
// and to the caller's own AAD (see blobAAD), so a blob cannot be moved to
// another key, owner or context.

const (
	blobVersion  = 1
	blobNonceLen = 12
	blobTagLen   = 16
	maxKeyIDLen  = 64
)

// ErrMalformedBlob is wrapped for a ciphertext that cannot be parsed.
var ErrMalformedBlob = errors.New("malformed ciphertext")

type blob struct {
	KeyID   string
	Version uint32
	Nonce   []byte
	Sealed  []byte
}

func (b blob) marshal() []byte {
	out := make([]byte, 0, 2+len(b.KeyID)+4+len(b.Nonce)+len(b.Sealed))
	out = append(out, blobVersion, byte(len(b.KeyID)))
	out = append(out, b.KeyID...)
	out = binary.BigEndian.AppendUint32(out, b.Version)
	out = append(out, b.Nonce...)
	return append(out, b.Sealed...)
}

func parseBlob(p []byte) (blob, error) {
	if len(p) < 2 {
		return blob{}, fmt.Errorf("%w: %d bytes is too short", ErrMalformedBlob, len(p))
	}
	if p[0] != blobVersion {
		return blob{}, fmt.Errorf("%w: format version %d, want %d", ErrMalformedBlob, p[0], blobVersion)
	}
	l := int(p[1])
	if l == 0 || l > maxKeyIDLen {
		return blob{}, fmt.Errorf("%w: key id length %d", ErrMalformedBlob, l)
	}
	if len(p) < 2+l+4+blobNonceLen+blobTagLen {
		return blob{}, fmt.Errorf("%w: %d bytes is too short", ErrMalformedBlob, len(p))
	}
	b := blob{KeyID: string(p[2 : 2+l])}
	b.Version = binary.BigEndian.Uint32(p[2+l:])
	if b.Version == 0 {
		return blob{}, fmt.Errorf("%w: key version 0", ErrMalformedBlob)
	}
	b.Nonce = p[6+l : 6+l+blobNonceLen]
	b.Sealed = p[6+l+blobNonceLen:]
	return b, nil
}

// blobAAD is the GCM additional data of a blob.
func blobAAD(keyID, owner string, version uint32, aad []byte) []byte {
	out := make([]byte, 0, 64+len(keyID)+len(owner)+len(aad))
	out = append(out, "veil-kms-blob-v1\x00"...)
	out = append(out, keyID...)
	out = append(out, 0)
	out = append(out, owner...)
	out = append(out, 0)
	out = binary.BigEndian.AppendUint32(out, version)
	return append(out, aad...)
}
