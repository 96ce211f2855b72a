package trustimage

import (
	"bytes"
	"testing"
)

// FuzzParseRecord: no panics, and an accepted record marshals and parses
// back to identical bytes.
func FuzzParseRecord(f *testing.F) {
	rec := &Record{Format: RecordFormat, Runtime: RuntimeIdentity, Measurement: pin1,
		Image:  ImageInfo{File: ImageFile, DataBlocks: 10, HashOffset: 40960, Size: 40960 + 2*BlockSize, BlockSize: BlockSize, Hash: "sha256", Salt: pin1, RootHash: pin2},
		Signer: SignerInfo{Algorithm: "ed25519", PublicKey: "AA=="}, Signature: "AA=="}
	seed, _ := rec.Marshal()
	f.Add(seed)
	rec.Image.Encryption = &EncryptionInfo{Cipher: CipherAES256CTR, KeySalt: pin2, KeyID: pin1[:32]}
	seed2, _ := rec.Marshal()
	f.Add(seed2)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRecord(data)
		if err != nil {
			return
		}
		out, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		r2, err := ParseRecord(out)
		if err != nil {
			t.Fatalf("re-parsing: %v", err)
		}
		out2, _ := r2.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatal("marshal is not stable")
		}
	})
}

// FuzzParseSuperblock: no panics on any input.
func FuzzParseSuperblock(f *testing.F) {
	f.Add(verityParams{dataBlocks: 3, salt: []byte(pin1[:32])}.superblock())
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseSuperblock(data)
		if err == nil && len(p.salt) > 256 {
			t.Fatal("oversized salt accepted")
		}
	})
}
