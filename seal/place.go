package seal

// The place block of version 2 (docs/formats/sealed-file.md): where a file
// belongs, authenticated under a key derived from its DEK, so that a file
// opened under another name or in another mount fails, and a rename
// re-binds it by rewriting the block alone.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Limits of a place.
const (
	MaxMountIDLen = 64
	MaxPlacePath  = 4096
	placeQuantum  = 256 // path capacities are multiples of this
)

// Errors of binding.
var (
	// ErrUnbound: the file is of version 1 and has no place to re-bind.
	ErrUnbound = errors.New("sealed file has no place binding (format version 1)")
	// ErrPlaceFull: the new path is longer than the room the file's place
	// block has; the file must be copied to be re-bound.
	ErrPlaceFull = errors.New("new path does not fit the sealed file's place block")
)

// Place is where a sealed file belongs: a mount, by its id, and the file's
// path relative to the mount root ("dir/file.csv").
type Place struct {
	Mount []byte
	Path  string
}

// MountID is the id of a sealed mount declared at target (its path inside
// the instance, from veil.json): the first 16 bytes of
// SHA-256("veil/seal/v2/mount-id" · 0x00 · target).
func MountID(target string) []byte {
	h := sha256.New()
	h.Write([]byte("veil/seal/v2/mount-id\x00"))
	h.Write([]byte(target))
	return h.Sum(nil)[:16]
}

func (p *Place) check() error {
	if len(p.Mount) == 0 || len(p.Mount) > MaxMountIDLen {
		return fmt.Errorf("%w: mount id of %d bytes (want 1 to %d)", ErrMalformed, len(p.Mount), MaxMountIDLen)
	}
	if p.Path == "" || len(p.Path) > MaxPlacePath {
		return fmt.Errorf("%w: path of %d bytes (want 1 to %d)", ErrMalformed, len(p.Path), MaxPlacePath)
	}
	for _, el := range strings.Split(p.Path, "/") {
		if el == "" || el == "." || el == ".." || strings.IndexByte(el, 0) >= 0 {
			return fmt.Errorf("%w: path %q is not a clean relative path", ErrMalformed, p.Path)
		}
	}
	return nil
}

func (p *Place) equal(q *Place) bool {
	return bytes.Equal(p.Mount, q.Mount) && p.Path == q.Path
}

// placeCapacity is the path room a new file gets for path.
func placeCapacity(path string) int {
	return max(placeQuantum, (len(path)+placeQuantum-1)/placeQuantum*placeQuantum)
}

// placeBlockLen is the length of a place block, its MAC included.
func placeBlockLen(mountLen, capacity int) int { return 1 + mountLen + 2 + capacity + headerMACLen }

// placeBlock encodes the place block without its MAC.
func (h *Header) placeBlock() []byte {
	p := h.Place
	b := make([]byte, 0, placeBlockLen(len(p.Mount), h.PlaceCapacity)-headerMACLen)
	b = append(b, byte(len(p.Mount)))
	b = append(b, p.Mount...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.Path)))
	b = append(b, p.Path...)
	return append(b, make([]byte, h.PlaceCapacity-len(p.Path))...)
}

// parsePlace parses a place block (MAC included) strictly: zero padding.
func (h *Header) parsePlace(b []byte) error {
	if len(b) < placeBlockLen(0, 0) {
		return fmt.Errorf("%w: place block of %d bytes", ErrMalformed, len(b))
	}
	m := int(b[0])
	if 1+m+2 > len(b)-headerMACLen {
		return fmt.Errorf("%w: place block: mount id truncated", ErrMalformed)
	}
	mount := b[1 : 1+m]
	l := int(binary.BigEndian.Uint16(b[1+m:]))
	room := b[1+m+2 : len(b)-headerMACLen]
	if l > len(room) {
		return fmt.Errorf("%w: place block: path of %d bytes in %d", ErrMalformed, l, len(room))
	}
	for _, c := range room[l:] {
		if c != 0 {
			return fmt.Errorf("%w: place block: padding is not zero", ErrMalformed)
		}
	}
	p := &Place{Mount: bytes.Clone(mount), Path: string(room[:l])}
	if err := p.check(); err != nil {
		return fmt.Errorf("place block: %w", err)
	}
	if len(room) > MaxPlacePath {
		return fmt.Errorf("%w: place block: capacity %d exceeds %d", ErrMalformed, len(room), MaxPlacePath)
	}
	h.Place, h.PlaceCapacity = p, len(room)
	copy(h.PlaceMAC[:], b[len(b)-headerMACLen:])
	return nil
}

// placeMAC is HMAC-SHA256(place key, header MAC · place block).
func placeMAC(k *fileKeys, headerMAC *[headerMACLen]byte, block []byte) [headerMACLen]byte {
	m := hmac.New(sha256.New, k.place[:])
	m.Write(headerMAC[:])
	m.Write(block)
	var out [headerMACLen]byte
	copy(out[:], m.Sum(nil))
	return out
}

// checkPlace compares the file's place with where it is opened: a version
// 2 file opened elsewhere is an integrity error naming the path it is
// bound to. Version 1 files and callers that do not know the place (want
// nil) pass.
func (h *Header) checkPlace(want *Place) error {
	if want == nil || h.Place == nil || h.Place.equal(want) {
		return nil
	}
	if !bytes.Equal(h.Place.Mount, want.Mount) {
		return integrityErr(int64(h.placeOff()), "file is bound to %q of another mount (mount id %x), opened as %q of mount %x (moved between mounts)", h.Place.Path, h.Place.Mount, want.Path, want.Mount)
	}
	return integrityErr(int64(h.placeOff()), "file is bound to path %q, opened as %q (swapped, moved or renamed outside the mount)", h.Place.Path, want.Path)
}

// CanRebind reports, without any key, whether the file of header h can be
// re-bound in place to path: ErrUnbound for version 1 files (they stay
// unbound), ErrPlaceFull when path is longer than the block's room.
func (h *Header) CanRebind(path string) error {
	if h.Place == nil {
		return ErrUnbound
	}
	if len(path) > h.PlaceCapacity {
		return fmt.Errorf("%w: %d bytes, room for %d", ErrPlaceFull, len(path), h.PlaceCapacity)
	}
	return nil
}

// Rebind moves the binding of the sealed file in st from its place from
// to p by rewriting its place block (and the block's MAC) alone: nothing
// is re-encrypted, the data, table and commit stay as they are. The header
// is authenticated first with a key u opens, and the file must be bound to
// from (so a file the host put in another's place is not re-bound but
// refused with an integrity error). A version 1 file gives ErrUnbound and
// is left unchanged.
func Rebind(st Storage, u KeyUnwrapper, from, p Place) error {
	h, err := ParseHeader(io.NewSectionReader(st, 0, maxHeaderLen))
	if err != nil {
		return err
	}
	if err := h.CanRebind(p.Path); err != nil {
		return err
	}
	if err := p.check(); err != nil {
		return err
	}
	if !bytes.Equal(p.Mount, h.Place.Mount) && len(p.Mount) != len(h.Place.Mount) {
		return fmt.Errorf("%w: mount id of %d bytes in a place block made for %d", ErrPlaceFull, len(p.Mount), len(h.Place.Mount))
	}
	k, err := openHeader(h, u, &from)
	if err != nil {
		return err
	}
	nh := *h
	nh.Place = &Place{Mount: bytes.Clone(p.Mount), Path: p.Path}
	blk := nh.placeBlock()
	mac := placeMAC(k, &h.MAC, blk)
	if _, err := st.WriteAt(append(blk, mac[:]...), int64(h.placeOff())); err != nil {
		return fmt.Errorf("writing place block: %w", err)
	}
	return nil
}
