package cli

// This file connects the packages that were built apart: the key service's
// --from-instance reads built images, and sealed files accept kms: keys.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/seal"
	"github.com/veil-tee/veil/trustimage"
)

// imageInstanceIdentity reads a built instance's verified identity.
func imageInstanceIdentity(dir string) (InstanceIdentity, error) {
	b, err := trustimage.LoadBuild(dir)
	if err != nil {
		return InstanceIdentity{}, err
	}
	return InstanceIdentity{
		Measurement: hex.EncodeToString(b.Measurement[:]),
		Signer:      hex.EncodeToString(b.MrSigner[:]),
		ProductID:   b.ProductID(),
		SVN:         b.SVN(),
	}, nil
}

// kmsKeySource resolves kms:KEY references with the key service configured
// like `veil kms` (flags are not available here: environment or profile).
type kmsKeySource struct{}

func (kmsKeySource) slot(ref string) (*kmsSlot, error) {
	cl, err := (&kmsOpts{}).client()
	if err != nil {
		return nil, err
	}
	return &kmsSlot{&client.Slot{Client: cl, KeyRef: ref}}, nil
}

func (k kmsKeySource) wrapper(_ context.Context, ref string) (seal.KeyWrapper, error) {
	return k.slot(ref)
}

func (k kmsKeySource) unwrapper(_ context.Context, ref string) (seal.KeyUnwrapper, error) {
	return k.slot(ref)
}

// auto opens kms slots without --key when a key service is configured.
// A key service that is configured but cannot be used (a CA file that
// cannot be read, a bad profile) is reported when a kms slot is tried,
// not mistaken for a key that does not fit.
func (k kmsKeySource) auto(context.Context) (seal.KeyUnwrapper, error) {
	s, err := k.slot("")
	if errors.Is(err, errNoKMSURL) {
		return nil, nil // no key service configured: kms slots stay closed
	}
	if err != nil {
		return unusableKMS{err}, nil
	}
	return s, nil
}

// unusableKMS answers every kms slot with why the configured key service
// cannot be used.
type unusableKMS struct{ err error }

func (u unusableKMS) UnwrapKey(sl seal.Slot, _ []byte) ([]byte, error) {
	if sl.Kind != client.SlotKind {
		return nil, fmt.Errorf("slot kind %q: %w", sl.Kind, seal.ErrSlotMismatch)
	}
	return nil, withHint(fmt.Errorf("key service for kms slot %s: %w", sl.KeyID, u.err),
		"fix the key service settings (VEIL_KMS_URL, VEIL_KMS_CA, VEIL_KMS_PROFILE), or open the file with --key file:PATH")
}

// kmsSlot reports a slot the key service cannot open (it holds no such
// key, or the slot does not decrypt) as seal.ErrWrongKey; a refusal by
// policy and every other error (unreachable, TLS, authentication) keep
// their own exit codes and hints.
type kmsSlot struct{ *client.Slot }

// WrapKey adds the key service hints (unreachable, unknown key) to errors.
func (s *kmsSlot) WrapKey(dek, binding []byte) (seal.Slot, error) {
	sl, err := s.Slot.WrapKey(dek, binding)
	return sl, kmsErr(err)
}

func (s *kmsSlot) UnwrapKey(sl seal.Slot, binding []byte) ([]byte, error) {
	dek, err := s.Slot.UnwrapKey(sl, binding)
	if err != nil && !errors.Is(err, seal.ErrSlotMismatch) && (errors.Is(err, client.ErrDecryptFailed) || errors.Is(err, client.ErrKeyNotFound)) {
		return nil, fmt.Errorf("%w: %w", seal.ErrWrongKey, kmsErr(err))
	}
	return dek, kmsErr(err)
}
