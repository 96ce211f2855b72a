package trustimage

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
)

// Derivation labels (docs/formats/image.md).
const (
	labelKeyID     = "veil image key id v1"
	labelKeySalt   = "veil image key salt v1"
	labelSubkey    = "veil image aes-256-ctr v1"
	labelSalt      = "veil verity salt v1"
	labelSaltCrypt = "veil verity salt encrypted v1"
	labelUUID      = "veil verity uuid v1"
)

func hmacSHA256(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

func sha256Of(parts ...[]byte) []byte {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

// KeyID identifies an image key without revealing it: the first 16 bytes of
// HMAC-SHA256(key, "veil image key id v1"), in hex.
func KeyID(key []byte) string {
	return hex.EncodeToString(hmacSHA256(key, []byte(labelKeyID))[:16])
}

// keySalt derives the per-image salt from the key and the SHA-256 of the
// plaintext image: the same image under the same key gives the same
// ciphertext (builds are reproducible), two different images never share a
// subkey, hence never a keystream.
func keySalt(key, plainDigest []byte) []byte {
	return hmacSHA256(key, []byte(labelKeySalt), plainDigest)
}

// blockCipher encrypts image blocks with AES-256-CTR under the per-image
// subkey; block i uses the counter i*256 (256 AES blocks per image block),
// so the whole image is one CTR stream that starts at zero under a key used
// for no other image.
type blockCipher struct{ b cipher.Block }

func newBlockCipher(key, salt []byte) (*blockCipher, error) {
	sub, err := hkdf.Key(sha256.New, key, salt, labelSubkey, 32)
	if err != nil {
		return nil, err
	}
	defer clear(sub)
	b, err := aes.NewCipher(sub)
	if err != nil {
		return nil, err
	}
	return &blockCipher{b: b}, nil
}

// xor encrypts or decrypts buf, which starts at image block first and is a
// whole number of blocks.
func (c *blockCipher) xor(buf []byte, first uint64) {
	var iv [aes.BlockSize]byte
	binary.BigEndian.PutUint64(iv[8:], first*(BlockSize/aes.BlockSize))
	cipher.NewCTR(c.b, iv[:]).XORKeyStream(buf, buf)
}

// veritySalt derives the verity salt: from the content digest for a plain
// image, from the key salt for an encrypted one (so it reveals nothing about
// the content to someone without the key).
func veritySalt(contentDigest, ks []byte) []byte {
	if ks != nil {
		return sha256Of([]byte(labelSaltCrypt), ks)
	}
	return sha256Of([]byte(labelSalt), contentDigest)
}

func verityUUID(salt []byte) [16]byte {
	var u [16]byte
	copy(u[:], sha256Of([]byte(labelUUID), salt))
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}
