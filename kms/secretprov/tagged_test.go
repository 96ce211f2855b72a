package secretprov_test

import (
	"crypto/sha256"

	"github.com/fxamacker/cbor/v2"

	"github.com/veil-tee/veil/attest/ratls"
)

// taggedEvidence encodes Gramine's tagged evidence [quote, claims] with
// the claims {"pubkey-hash": [sha-256, SHA-256(spki)]}.
func taggedEvidence(quote, spki []byte) []byte {
	h := sha256.Sum256(spki)
	em, _ := cbor.CoreDetEncOptions().EncMode()
	claims, _ := em.Marshal(map[string]any{"pubkey-hash": []any{1, h[:]}})
	b, _ := em.Marshal(cbor.Tag{Number: ratls.TagEvidence, Content: []any{quote, claims}})
	return b
}
