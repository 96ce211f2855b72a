package seal

import (
	"errors"
	"fmt"
)

// Sentinel errors. Integrity failures wrap ErrIntegrity through *IntegrityError.
var (
	// ErrNotSealed means the input does not start with the sealed-file magic.
	ErrNotSealed = errors.New("not a sealed file")
	// ErrUnsupported means a version, algorithm or flag this build does not know.
	ErrUnsupported = errors.New("unsupported sealed-file format")
	// ErrMalformed means the header breaks the format's rules.
	ErrMalformed = errors.New("malformed sealed-file header")
	// ErrWrongKey means no key slot could be opened with the keys given.
	ErrWrongKey = errors.New("no key slot opens with the given key")
	// ErrIntegrity means the content failed authentication.
	ErrIntegrity = errors.New("sealed file failed integrity check")
	// ErrClosed is returned by operations on a closed File, Reader or Writer.
	ErrClosed = errors.New("sealed file is closed")
	// ErrTooLarge is returned when a file would exceed the format's limits.
	ErrTooLarge = errors.New("sealed file too large")
)

// IntegrityError reports where a sealed file failed authentication.
// Offset is the byte offset in the sealed (stored) file.
type IntegrityError struct {
	Offset int64
	Reason string
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("integrity check failed at offset %d: %s", e.Offset, e.Reason)
}

// Is makes errors.Is(err, ErrIntegrity) true.
func (e *IntegrityError) Is(target error) bool { return target == ErrIntegrity }

func integrityErr(off int64, format string, a ...any) error {
	return &IntegrityError{Offset: off, Reason: fmt.Sprintf(format, a...)}
}
