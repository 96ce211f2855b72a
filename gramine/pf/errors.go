package pf

import (
	"errors"
	"fmt"
)

var (
	// ErrNotPF reports input that does not start with the GRAFS_PF magic.
	ErrNotPF = errors.New("not a Gramine protected file (no GRAFS_PF magic)")
	// ErrIntegrity reports a file that failed authentication: a wrong key,
	// a modified, truncated, extended or reordered file, or a file bound to
	// another path (see PathError).
	ErrIntegrity = errors.New("protected file failed authentication")
	// ErrUnsupported reports a protected file this package does not handle
	// (another major version, a pending crash-recovery write, unknown
	// feature flags).
	ErrUnsupported = errors.New("unsupported protected file")
	// ErrClosed reports use of a File after Close.
	ErrClosed = errors.New("protected file is closed")
	// ErrReadOnly reports a write to a File opened read-only.
	ErrReadOnly = errors.New("protected file is open read-only")
)

// PathError reports a protected file opened under a path other than the one
// bound into its metadata (Gramine's "Invalid path"). It matches
// ErrIntegrity with errors.Is: a moved file is refused like a modified one.
type PathError struct {
	Bound string // the path recorded in the file
	Want  string // the path it was opened as
}

func (e *PathError) Error() string {
	return fmt.Sprintf("protected file is bound to path %q, not %q", e.Bound, e.Want)
}

// Is makes a PathError match ErrIntegrity.
func (e *PathError) Is(target error) bool { return target == ErrIntegrity }

func integrityf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrIntegrity, fmt.Sprintf(format, args...))
}
