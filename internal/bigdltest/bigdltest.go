// Package bigdltest writes BigDL PPML encrypted files
// (docs/formats/bigdl.md) for tests only: veil reads this format and
// deliberately offers no writer for it.
package bigdltest

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"time"

	"github.com/veil-tee/veil/bigdl"
)

// Write encrypts plain as BigDL does under dataKey (at least 32 bytes):
// header (0x80, big-endian Unix seconds, the IV derived from the MAC key),
// AES-128-CBC with PKCS#5 padding, then HMAC-SHA256 under the MAC key over
// as many leading ciphertext bytes as the plaintext has. plain must not be
// empty (BigDL cannot write an empty file).
func Write(dataKey, plain []byte, when time.Time) []byte {
	macKey, encKey := dataKey[:16], dataKey[16:32]
	iv := bigdl.DerivedIV(macKey)
	var out bytes.Buffer
	out.WriteByte(0x80)
	binary.Write(&out, binary.BigEndian, when.Unix())
	out.Write(iv[:])
	pad := aes.BlockSize - len(plain)%aes.BlockSize
	p := append(append([]byte{}, plain...), bytes.Repeat([]byte{byte(pad)}, pad)...)
	blk, err := aes.NewCipher(encKey)
	if err != nil {
		panic(err) // 16-byte key: cannot fail
	}
	ct := make([]byte, len(p))
	cipher.NewCBCEncrypter(blk, iv[:]).CryptBlocks(ct, p)
	out.Write(ct)
	m := hmac.New(sha256.New, macKey)
	m.Write(ct[:len(plain)])
	out.Write(m.Sum(nil))
	return out.Bytes()
}
