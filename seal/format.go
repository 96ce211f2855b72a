package seal

// This file is the only place that reads or writes the raw bytes of the
// format (docs/formats/sealed-file.md): header, records and commit trailer.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
)

// Format constants of versions 1 and 2.
const (
	Magic        = "VEILSEAL"
	commitMagic  = "VEILCMIT"
	Version1     = 1
	Version2     = 2 // version 1 plus a place block: the file's mount and path
	AlgAES256GCM = 1 // AES-256-GCM segments, HKDF-SHA256 subkeys, HMAC-SHA256 header and commit

	fixedHeaderLen = 37 // magic 8, version 1, alg 1, flags 2, segment 4, header length 4, file ID 16, slot count 1
	headerMACLen   = 32
	maxHeaderLen   = 1 << 16

	nonceLen       = 12
	tagLen         = 16
	recordOverhead = nonceLen + tagLen // per segment, inline; the same again in the table
	tableEntryLen  = nonceLen + tagLen
	commitLen      = 8 + 8 + 8 + 32 + 32

	// DefaultSegmentSize is the plaintext bytes per segment unless Options say otherwise.
	DefaultSegmentSize = 64 << 10
	MinSegmentSize     = 4 << 10
	MaxSegmentSize     = 4 << 20

	// maxSegments bounds a file's segment count so that random 96-bit
	// nonces stay far from collision across a file's lifetime of rewrites.
	maxSegments = 1 << 32
)

// FileIDLen is the length of a sealed file's random identifier.
const FileIDLen = 16

// Header is the parsed, self-describing start of a sealed file. It can be
// read without any key (see ParseHeader); its MAC is checked once the DEK is
// known.
type Header struct {
	Version     uint8
	Algorithm   uint8
	SegmentSize int
	FileID      [FileIDLen]byte
	Slots       []Slot
	MAC         [headerMACLen]byte
	// Place (version 2) is where the file belongs; nil for version 1.
	Place *Place
	// PlaceCapacity (version 2) is the room for the path in the place
	// block: a rename re-binds the file in place up to this length.
	PlaceCapacity int
	// PlaceMAC (version 2) authenticates the place block.
	PlaceMAC [headerMACLen]byte

	raw []byte // the exact bytes parsed or marshalled, MAC included
}

// Len is the header's length in bytes, MAC and place block included.
func (h *Header) Len() int { return len(h.raw) }

// macOff is where the header MAC starts: the end of the key slots.
func (h *Header) macOff() int {
	if h.Place == nil {
		return len(h.raw) - headerMACLen
	}
	return len(h.raw) - h.placeBlockLen() - headerMACLen
}

// placeOff is where the place block starts.
func (h *Header) placeOff() int { return len(h.raw) - h.placeBlockLen() }

func (h *Header) placeBlockLen() int {
	if h.Place == nil {
		return 0
	}
	return placeBlockLen(len(h.Place.Mount), h.PlaceCapacity)
}

// binding is the file-specific context every key slot authenticates.
func (h *Header) binding() []byte {
	b := make([]byte, 0, 8+2+FileIDLen)
	b = append(b, Magic...)
	b = append(b, h.Version, h.Algorithm)
	return append(b, h.FileID[:]...)
}

// marshalBody encodes h up to its MAC (the MAC needs the DEK), with the
// header length of the whole header. It checks limits.
func (h *Header) marshalBody() ([]byte, error) {
	if (h.Version == Version2) != (h.Place != nil) {
		return nil, fmt.Errorf("%w: version %d with place %v", ErrMalformed, h.Version, h.Place)
	}
	var pb int
	if h.Place != nil {
		if err := h.Place.check(); err != nil {
			return nil, err
		}
		if len(h.Place.Path) > h.PlaceCapacity || h.PlaceCapacity > MaxPlacePath {
			return nil, fmt.Errorf("%w: path of %d bytes in a place of %d", ErrMalformed, len(h.Place.Path), h.PlaceCapacity)
		}
		pb = h.placeBlockLen()
	}
	if len(h.Slots) == 0 || len(h.Slots) > MaxSlots {
		return nil, fmt.Errorf("%w: %d key slots (want 1 to %d)", ErrMalformed, len(h.Slots), MaxSlots)
	}
	if err := checkSegmentSize(h.SegmentSize); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(Magic)
	b.WriteByte(h.Version)
	b.WriteByte(h.Algorithm)
	b.Write([]byte{0, 0}) // flags
	binary.Write(&b, binary.BigEndian, uint32(h.SegmentSize))
	b.Write([]byte{0, 0, 0, 0}) // header length, patched below
	b.Write(h.FileID[:])
	b.WriteByte(byte(len(h.Slots)))
	for i, s := range h.Slots {
		if err := checkSlot(s); err != nil {
			return nil, fmt.Errorf("key slot %d: %w", i, err)
		}
		b.WriteByte(byte(len(s.Kind)))
		b.WriteString(s.Kind)
		binary.Write(&b, binary.BigEndian, uint16(len(s.KeyID)))
		b.WriteString(s.KeyID)
		binary.Write(&b, binary.BigEndian, uint16(len(s.Wrapped)))
		b.Write(s.Wrapped)
	}
	total := b.Len() + headerMACLen + pb
	if total > maxHeaderLen {
		return nil, fmt.Errorf("%w: header of %d bytes exceeds %d", ErrMalformed, total, maxHeaderLen)
	}
	out := b.Bytes()
	binary.BigEndian.PutUint32(out[16:20], uint32(total))
	return out, nil
}

func checkSlot(s Slot) error {
	switch {
	case s.Kind == "" || len(s.Kind) > MaxSlotKindLen:
		return fmt.Errorf("%w: slot kind length %d (want 1 to %d)", ErrMalformed, len(s.Kind), MaxSlotKindLen)
	case len(s.KeyID) > MaxSlotKeyIDLen:
		return fmt.Errorf("%w: slot key id length %d exceeds %d", ErrMalformed, len(s.KeyID), MaxSlotKeyIDLen)
	case len(s.Wrapped) == 0 || len(s.Wrapped) > MaxWrappedLen:
		return fmt.Errorf("%w: wrapped key length %d (want 1 to %d)", ErrMalformed, len(s.Wrapped), MaxWrappedLen)
	}
	for _, c := range []byte(s.Kind) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%w: slot kind %q has characters outside [a-z0-9-]", ErrMalformed, s.Kind)
		}
	}
	for _, c := range []byte(s.KeyID) {
		if c < 0x20 || c > 0x7e {
			return fmt.Errorf("%w: slot key id has a non-printable byte", ErrMalformed)
		}
	}
	return nil
}

func checkSegmentSize(n int) error {
	if n < MinSegmentSize || n > MaxSegmentSize || n&(n-1) != 0 {
		return fmt.Errorf("%w: segment size %d (want a power of two from %d to %d)", ErrUnsupported, n, MinSegmentSize, MaxSegmentSize)
	}
	return nil
}

// Marshal encodes the header from its fields, MACs included. For a parsed
// header it reproduces the parsed bytes exactly.
func (h *Header) Marshal() ([]byte, error) {
	body, err := h.marshalBody()
	if err != nil {
		return nil, err
	}
	out := append(body, h.MAC[:]...)
	if h.Place != nil {
		out = append(out, h.placeBlock()...)
		out = append(out, h.PlaceMAC[:]...)
	}
	return out, nil
}

// ParseHeader reads and parses a header from r without any key. It reads
// exactly the header's bytes. The MAC is not checked (it needs the DEK).
func ParseHeader(r io.Reader) (*Header, error) {
	fixed := make([]byte, 20)
	if n, err := io.ReadFull(r, fixed); err != nil {
		if n < len(Magic) || !bytes.Equal(fixed[:len(Magic)], []byte(Magic)) {
			return nil, ErrNotSealed
		}
		return nil, fmt.Errorf("%w: header truncated at %d bytes", ErrMalformed, n)
	}
	if !bytes.Equal(fixed[:8], []byte(Magic)) {
		return nil, ErrNotSealed
	}
	total := int(binary.BigEndian.Uint32(fixed[16:20]))
	if total < fixedHeaderLen+headerMACLen || total > maxHeaderLen {
		return nil, fmt.Errorf("%w: header length %d out of range", ErrMalformed, total)
	}
	raw := make([]byte, total)
	copy(raw, fixed)
	if n, err := io.ReadFull(r, raw[20:]); err != nil {
		return nil, fmt.Errorf("%w: header truncated at %d of %d bytes", ErrMalformed, 20+n, total)
	}
	return parseHeaderBytes(raw)
}

func parseHeaderBytes(raw []byte) (*Header, error) {
	h := &Header{Version: raw[8], Algorithm: raw[9], raw: raw}
	if h.Version != Version1 && h.Version != Version2 {
		return nil, fmt.Errorf("%w: version %d (this build reads versions %d and %d)", ErrUnsupported, h.Version, Version1, Version2)
	}
	if h.Algorithm != AlgAES256GCM {
		return nil, fmt.Errorf("%w: algorithm %d", ErrUnsupported, h.Algorithm)
	}
	if raw[10] != 0 || raw[11] != 0 {
		return nil, fmt.Errorf("%w: flags %#04x", ErrUnsupported, binary.BigEndian.Uint16(raw[10:12]))
	}
	h.SegmentSize = int(binary.BigEndian.Uint32(raw[12:16]))
	if err := checkSegmentSize(h.SegmentSize); err != nil {
		return nil, err
	}
	copy(h.FileID[:], raw[20:36])
	nslots := int(raw[36])
	body := raw[fixedHeaderLen : len(raw)-headerMACLen]
	if h.Version == Version2 {
		body = raw[fixedHeaderLen:]
	}
	for i := 0; i < nslots; i++ {
		var s Slot
		var ok bool
		var kind, keyID, wrapped []byte
		if kind, body, ok = cut8(body); !ok {
			return nil, fmt.Errorf("%w: key slot %d: kind truncated", ErrMalformed, i)
		}
		if keyID, body, ok = cut16(body); !ok {
			return nil, fmt.Errorf("%w: key slot %d: key id truncated", ErrMalformed, i)
		}
		if wrapped, body, ok = cut16(body); !ok {
			return nil, fmt.Errorf("%w: key slot %d: wrapped key truncated", ErrMalformed, i)
		}
		s.Kind, s.KeyID, s.Wrapped = string(kind), string(keyID), append([]byte(nil), wrapped...)
		if err := checkSlot(s); err != nil {
			return nil, fmt.Errorf("key slot %d: %w", i, err)
		}
		h.Slots = append(h.Slots, s)
	}
	if nslots == 0 || nslots > MaxSlots {
		return nil, fmt.Errorf("%w: %d key slots (want 1 to %d)", ErrMalformed, nslots, MaxSlots)
	}
	if h.Version == Version2 {
		if len(body) < headerMACLen {
			return nil, fmt.Errorf("%w: header MAC truncated", ErrMalformed)
		}
		copy(h.MAC[:], body)
		if err := h.parsePlace(body[headerMACLen:]); err != nil {
			return nil, err
		}
		return h, nil
	}
	if len(body) != 0 {
		return nil, fmt.Errorf("%w: %d unexpected bytes after the key slots", ErrMalformed, len(body))
	}
	copy(h.MAC[:], raw[len(raw)-headerMACLen:])
	return h, nil
}

func cut8(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return nil, nil, false
	}
	return b[1 : 1+int(b[0])], b[1+int(b[0]):], true
}

func cut16(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return nil, nil, false
	}
	return b[2 : 2+n], b[2+n:], true
}

// seal completes a header: it marshals the body and appends the MAC (and,
// in version 2, the place block and its MAC).
func (h *Header) seal(k *fileKeys) error {
	body, err := h.marshalBody()
	if err != nil {
		return err
	}
	m := hmac.New(sha256.New, k.header[:])
	m.Write(body)
	copy(h.MAC[:], m.Sum(nil))
	h.raw = append(body, h.MAC[:]...)
	if h.Place != nil {
		blk := h.placeBlock()
		h.PlaceMAC = placeMAC(k, &h.MAC, blk)
		h.raw = append(append(h.raw, blk...), h.PlaceMAC[:]...)
	}
	return nil
}

// verify checks the header MAC, and the place MAC of a version 2 header,
// under the file's keys.
func (h *Header) verify(k *fileKeys) error {
	off := h.macOff()
	m := hmac.New(sha256.New, k.header[:])
	m.Write(h.raw[:off])
	if !hmac.Equal(m.Sum(nil), h.MAC[:]) {
		return integrityErr(int64(off), "header authentication failed (header altered or taken from another file)")
	}
	if h.Place != nil {
		want := placeMAC(k, &h.MAC, h.raw[h.placeOff():len(h.raw)-headerMACLen])
		if !hmac.Equal(want[:], h.PlaceMAC[:]) {
			return integrityErr(int64(h.placeOff()), "place block authentication failed (path binding altered or taken from another file)")
		}
	}
	return nil
}

// commit is the trailer that ends every sealed file.
type commit struct {
	Seq       uint64
	Size      uint64
	TableHash [32]byte
	MAC       [32]byte
}

func (c *commit) mac(k *fileKeys, h *Header) [32]byte {
	m := hmac.New(sha256.New, k.commit[:])
	m.Write(h.MAC[:])
	m.Write([]byte(commitMagic))
	var n [16]byte
	binary.BigEndian.PutUint64(n[:8], c.Seq)
	binary.BigEndian.PutUint64(n[8:], c.Size)
	m.Write(n[:])
	m.Write(c.TableHash[:])
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

func (c *commit) marshal() []byte {
	b := make([]byte, 0, commitLen)
	b = append(b, commitMagic...)
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	b = binary.BigEndian.AppendUint64(b, c.Size)
	b = append(b, c.TableHash[:]...)
	return append(b, c.MAC[:]...)
}

// parseCommit parses a trailer; ok is false if b is not one.
func parseCommit(b []byte) (c commit, ok bool) {
	if len(b) != commitLen || !bytes.Equal(b[:8], []byte(commitMagic)) {
		return c, false
	}
	c.Seq = binary.BigEndian.Uint64(b[8:16])
	c.Size = binary.BigEndian.Uint64(b[16:24])
	copy(c.TableHash[:], b[24:56])
	copy(c.MAC[:], b[56:88])
	return c, true
}

// layout computes positions in a sealed file of a given plaintext size.
type layout struct {
	headerLen int64
	segSize   int64
}

func (l layout) segments(size int64) int64 { return (size + l.segSize - 1) / l.segSize }

// recordOff is where segment i's record starts.
func (l layout) recordOff(i int64) int64 { return l.headerLen + i*(l.segSize+recordOverhead) }

// tableOff is where the table starts for a file of plaintext size.
func (l layout) tableOff(size int64) int64 {
	return l.headerLen + size + l.segments(size)*recordOverhead
}

// fileLen is the total stored length for a plaintext size.
func (l layout) fileLen(size int64) int64 {
	return l.tableOff(size) + l.segments(size)*tableEntryLen + commitLen
}

// segLen is the plaintext length of segment i in a file of plaintext size.
func (l layout) segLen(i, size int64) int64 {
	if rest := size - i*l.segSize; rest < l.segSize {
		return rest
	}
	return l.segSize
}

// segAAD is the additional data of segment i.
func segAAD(dst []byte, fileID *[FileIDLen]byte, i uint64) []byte {
	dst = append(dst[:0], fileID[:]...)
	return binary.BigEndian.AppendUint64(dst, i)
}

// findCommit looks for a valid commit trailer inside b that is not at its
// end, to tell an extended file from a damaged one. It returns the offset
// just past the trailer.
func findCommit(b []byte, k *fileKeys, h *Header) (end int, ok bool) {
	for i := bytes.LastIndex(b, []byte(commitMagic)); i >= 0; i = bytes.LastIndex(b[:i], []byte(commitMagic)) {
		if i+commitLen > len(b) {
			continue
		}
		if c, ok := parseCommit(b[i : i+commitLen]); ok && c.MAC == c.mac(k, h) {
			return i + commitLen, true
		}
	}
	return 0, false
}
