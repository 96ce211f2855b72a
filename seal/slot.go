package seal

import (
	"errors"
)

// Slot is one key slot of a sealed file's header: it says how the file's
// data-encryption key (DEK) is obtained. Kind names the mechanism ("file" for
// a local wrap key, "kms" for a key service); KeyID names the key within
// that mechanism (for "file", a fingerprint of the wrap key, never a path;
// for "kms", the key service's key reference); Wrapped is the DEK encrypted
// under that key, bound to the file (see docs/formats/sealed-file.md).
type Slot struct {
	Kind    string
	KeyID   string
	Wrapped []byte
}

// Slot limits enforced by the header parser.
const (
	MaxSlots        = 16
	MaxSlotKindLen  = 16
	MaxSlotKeyIDLen = 1024
	MaxWrappedLen   = 4096
)

// ErrSlotMismatch is returned by a KeyUnwrapper asked to open a slot that is
// not its own (another kind, or another key id). Unwrapping tries the next slot.
var ErrSlotMismatch = errors.New("key slot is not for this key")

// A KeyWrapper wraps a new file's DEK into a key slot. binding is the
// file-specific context (magic, version and file ID) that the wrapping must
// authenticate, so a slot cannot be moved to another file.
type KeyWrapper interface {
	WrapKey(dek, binding []byte) (Slot, error)
}

// A KeyUnwrapper recovers a DEK from a slot it owns, authenticating binding.
// It returns an error wrapping ErrSlotMismatch for slots that are not its
// own, and one wrapping ErrWrongKey when the slot is its kind and key id but
// does not open.
type KeyUnwrapper interface {
	UnwrapKey(s Slot, binding []byte) ([]byte, error)
}
