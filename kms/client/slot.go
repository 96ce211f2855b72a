package client

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/veil-tee/veil/seal"
)

// SlotKind is the seal.Slot Kind of key slots held by the key service.
const SlotKind = "kms"

// Slot wraps and unwraps sealed-file data keys with a key service key. It
// implements seal.KeyWrapper and seal.KeyUnwrapper. The wrapped DEK is the
// service's ciphertext of the DEK with AAD = the file binding, so a slot
// cannot be moved to another file; the slot's KeyID is "KEYID/vVERSION".
// Whether the client acts as the owning app or as an attested workload
// follows from its Config.
type Slot struct {
	Client *Client
	// KeyRef names the key for wrapping (id or the app's key name). For
	// unwrapping it may be empty (any kms slot is tried); if it is a key
	// id, slots of other keys are reported as seal.ErrSlotMismatch.
	KeyRef string
	// Timeout bounds each call (default 30 s).
	Timeout time.Duration
}

var (
	_ seal.KeyWrapper   = (*Slot)(nil)
	_ seal.KeyUnwrapper = (*Slot)(nil)
)

func (s *Slot) ctx() (context.Context, context.CancelFunc) {
	d := s.Timeout
	if d == 0 {
		d = 30 * time.Second
	}
	return context.WithTimeout(context.Background(), d)
}

// SlotKeyID formats a slot key id.
func SlotKeyID(keyID string, version int) string { return keyID + "/v" + strconv.Itoa(version) }

// ParseSlotKeyID splits a slot key id into key id and version.
func ParseSlotKeyID(s string) (string, int, error) {
	id, v, ok := strings.Cut(s, "/v")
	n, err := strconv.Atoi(v)
	if !ok || err != nil || n < 1 || id == "" {
		return "", 0, fmt.Errorf("kms slot key id %q is not KEYID/vVERSION", s)
	}
	return id, n, nil
}

// WrapKey encrypts dek under the key, bound to binding.
func (s *Slot) WrapKey(dek, binding []byte) (seal.Slot, error) {
	if s.KeyRef == "" {
		return seal.Slot{}, fmt.Errorf("%w: no key service key given for wrapping", ErrConfig)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	r, err := s.Client.Encrypt(ctx, s.KeyRef, dek, binding)
	if err != nil {
		return seal.Slot{}, fmt.Errorf("wrapping the data key with %s: %w", s.KeyRef, err)
	}
	return seal.Slot{Kind: SlotKind, KeyID: SlotKeyID(r.KeyID, r.KeyVersion), Wrapped: r.Ciphertext}, nil
}

// UnwrapKey asks the service to decrypt the slot's wrapped DEK with AAD =
// binding. A slot that does not authenticate yields an error matching
// ErrDecryptFailed.
func (s *Slot) UnwrapKey(sl seal.Slot, binding []byte) ([]byte, error) {
	if sl.Kind != SlotKind {
		return nil, fmt.Errorf("slot kind %q: %w", sl.Kind, seal.ErrSlotMismatch)
	}
	id, _, err := ParseSlotKeyID(sl.KeyID)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(s.KeyRef, "k_") && s.KeyRef != id {
		return nil, fmt.Errorf("slot for key %s: %w", id, seal.ErrSlotMismatch)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	r, err := s.Client.Decrypt(ctx, sl.Wrapped, binding)
	if err != nil {
		return nil, fmt.Errorf("unwrapping the data key with %s: %w", sl.KeyID, err)
	}
	if r.KeyID != id {
		clear(r.Plaintext)
		return nil, fmt.Errorf("slot names key %s but its ciphertext names %s: %w", id, r.KeyID, ErrDecryptFailed)
	}
	return r.Plaintext, nil
}
