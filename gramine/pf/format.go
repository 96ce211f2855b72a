package pf

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"path"
)

// Layout of a protected file: 4096-byte nodes. Node 0 is the metadata node,
// node 1 the root Merkle (MHT) node; after it come groups of 96 data nodes,
// each group but the first preceded by its own MHT node. The first 3072
// bytes of plaintext live inside the metadata node.
const (
	NodeSize = 4096 // bytes in every node
	KeySize  = 16   // bytes in a wrap key and in every node key

	// Magic is the file id at offset 0 (a little-endian uint64 in Gramine).
	Magic = "GRAFS_PF"

	versionMajor  = 2
	versionMinor  = 0
	versionMajor1 = 1 // read and migrated on write, like Gramine

	macSize        = 16
	nonceSize      = 32
	pathMaxSize    = 260 + 512 // bound path including its NUL
	mdDataSize     = NodeSize * 3 / 4
	entrySize      = KeySize + macSize
	dataPerMHT     = NodeSize / entrySize * 3 / 4 // 96 data nodes under an MHT node
	childrenPerMHT = NodeSize / entrySize / 4     // 32 MHT nodes under an MHT node

	// Plaintext header: magic, major, minor, key nonce, metadata MAC, flags.
	offMajor  = 8
	offMinor  = 9
	offNonce  = 10
	offMAC    = offNonce + nonceSize
	offFlags  = offMAC + macSize
	plainSize = offFlags + 1 // 59; version 1 has no flags byte (58)

	// Encrypted part: bound path, plaintext size, root MHT key and MAC, and
	// the first 3072 bytes of plaintext.
	encOffPath    = 0
	encOffSize    = pathMaxSize
	encOffRootKey = encOffSize + 8
	encOffRootMAC = encOffRootKey + KeySize
	encOffData    = encOffRootMAC + macSize
	encSize       = encOffData + mdDataSize // 3884

	flagPendingWrite = 0x01

	kdfLabel    = "SGX-PROTECTED-FS-METADATA-KEY"
	kdfLabelMax = 64
)

// Key is a 16-byte Gramine wrap key (the key of an encrypted mount, or of
// gramine-sgx-pf-crypt -w).
type Key [KeySize]byte

// ParseKey reads a wrap key as Gramine keeps one: 16 raw bytes, or 32
// hexadecimal digits (as in a manifest), optionally followed by a newline.
func ParseKey(b []byte) (Key, error) {
	var k Key
	if len(b) == KeySize {
		copy(k[:], b)
		return k, nil
	}
	t := bytes.TrimSpace(b)
	if len(t) == 2*KeySize {
		if _, err := hex.Decode(k[:], t); err == nil {
			return k, nil
		}
	}
	return Key{}, fmt.Errorf("a Gramine wrap key is 16 raw bytes or 32 hex digits, got %d bytes", len(b))
}

// NormPath normalizes a path the way Gramine does before binding it into a
// file: "." and empty components are dropped, ".." eats the previous
// component, a leading "/" is kept. "." alone normalizes to "".
func NormPath(p string) string {
	if p == "" {
		return ""
	}
	c := path.Clean(p)
	if c == "." {
		return ""
	}
	return c
}

// header is the plaintext part of the metadata node.
type header struct {
	major, minor byte
	nonce        [nonceSize]byte
	mac          [macSize]byte
	flags        byte
}

// metadata is the decrypted part of the metadata node.
type metadata struct {
	path    [pathMaxSize]byte
	size    uint64
	rootKey [KeySize]byte
	rootMAC [macSize]byte
	data    [mdDataSize]byte
}

func (m *metadata) boundPath() string {
	if i := bytes.IndexByte(m.path[:], 0); i >= 0 {
		return string(m.path[:i])
	}
	return string(m.path[:])
}

func (m *metadata) marshal(b []byte) {
	copy(b[encOffPath:], m.path[:])
	binary.LittleEndian.PutUint64(b[encOffSize:], m.size)
	copy(b[encOffRootKey:], m.rootKey[:])
	copy(b[encOffRootMAC:], m.rootMAC[:])
	copy(b[encOffData:], m.data[:])
}

func (m *metadata) unmarshal(b []byte) {
	copy(m.path[:], b[encOffPath:])
	m.size = binary.LittleEndian.Uint64(b[encOffSize:])
	copy(m.rootKey[:], b[encOffRootKey:])
	copy(m.rootMAC[:], b[encOffRootMAC:])
	copy(m.data[:], b[encOffData:encSize])
}

// parseMetadataNode checks the plaintext header of node 0 and returns it
// with the encrypted part (migrating version 1's layout).
func parseMetadataNode(node []byte) (header, []byte, error) {
	var h header
	if len(node) < NodeSize || string(node[:8]) != Magic {
		return h, nil, ErrNotPF
	}
	h.major, h.minor = node[offMajor], node[offMinor]
	copy(h.nonce[:], node[offNonce:])
	copy(h.mac[:], node[offMAC:])
	var enc []byte
	var rest []byte
	switch h.major {
	case versionMajor:
		h.flags = node[offFlags]
		enc = node[plainSize : plainSize+encSize]
		rest = node[plainSize+encSize:]
	case versionMajor1:
		enc = node[offFlags : offFlags+encSize]
		rest = node[offFlags+encSize:]
	default:
		return h, nil, fmt.Errorf("%w: format version %d.%d (veil reads 1 and 2)", ErrUnsupported, h.major, h.minor)
	}
	if h.minor != versionMinor {
		return h, nil, fmt.Errorf("%w: format version %d.%d (veil reads 1.0 and 2.0)", ErrUnsupported, h.major, h.minor)
	}
	if h.flags&flagPendingWrite != 0 {
		return h, nil, fmt.Errorf("%w: the file has a pending write (Gramine crashed while flushing it); recover it with Gramine (enable_recovery) first", ErrUnsupported)
	}
	if h.flags != 0 {
		return h, nil, fmt.Errorf("%w: unknown feature flags %#02x", ErrUnsupported, h.flags)
	}
	// Gramine never writes the padding after the encrypted part; it is not
	// authenticated, so anything there is a modification.
	for _, c := range rest {
		if c != 0 {
			return h, nil, integrityf("metadata node padding is not zero")
		}
	}
	return h, enc, nil
}

func (h *header) marshal(node []byte) {
	clear(node[:NodeSize])
	copy(node, Magic)
	node[offMajor] = versionMajor
	node[offMinor] = versionMinor
	copy(node[offNonce:], h.nonce[:])
	copy(node[offMAC:], h.mac[:])
	node[offFlags] = h.flags
}

// metadataKey derives the key of the metadata node from the wrap key and
// the nonce in the header: one block of the NIST SP 800-108 counter-mode
// KDF with AES-CMAC as PRF (counter 1, label, nonce, 128-bit output).
func metadataKey(wrap *Key, nonce *[nonceSize]byte) [KeySize]byte {
	var in [4 + kdfLabelMax + nonceSize + 4]byte
	binary.LittleEndian.PutUint32(in[0:], 1)
	copy(in[4:], kdfLabel)
	copy(in[4+kdfLabelMax:], nonce[:])
	binary.LittleEndian.PutUint32(in[4+kdfLabelMax+nonceSize:], 128)
	return cmac(wrap[:], in[:])
}

// cmac computes AES-CMAC (RFC 4493) of msg under a 16-byte key.
func cmac(key, msg []byte) [16]byte {
	blk, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // unreachable: the key is always 16 bytes
	}
	var l, k1, k2 [16]byte
	blk.Encrypt(l[:], l[:])
	dbl := func(dst, src *[16]byte) {
		var carry byte
		for i := 15; i >= 0; i-- {
			b := src[i]
			dst[i] = b<<1 | carry
			carry = b >> 7
		}
		dst[15] ^= byte(subtle.ConstantTimeSelect(int(carry), 0x87, 0))
	}
	dbl(&k1, &l)
	dbl(&k2, &k1)
	var x [16]byte
	n := (len(msg) + 15) / 16
	if n == 0 {
		n = 1
	}
	for i := 0; i < n-1; i++ {
		subtle.XORBytes(x[:], x[:], msg[i*16:i*16+16])
		blk.Encrypt(x[:], x[:])
	}
	var last [16]byte
	tail := msg[(n-1)*16:]
	if len(tail) == 16 {
		subtle.XORBytes(last[:], tail, k1[:])
	} else {
		copy(last[:], tail)
		last[len(tail)] = 0x80
		subtle.XORBytes(last[:], last[:], k2[:])
	}
	subtle.XORBytes(x[:], x[:], last[:])
	blk.Encrypt(x[:], x[:])
	return x
}

// newGCM returns AES-128-GCM under key; every node and the metadata are
// encrypted under a key used once, with an all-zero 96-bit IV.
func newGCM(key []byte) cipher.AEAD {
	blk, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // unreachable: keys are always 16 bytes
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		panic(err)
	}
	return g
}

var zeroIV [12]byte

// Node numbering.

// dataPhys is the physical node number of logical data node d.
func dataPhys(d uint64) uint64 { return d + 2 + d/dataPerMHT }

// mhtPhys is the physical node number of logical MHT node m (0 = root).
func mhtPhys(m uint64) uint64 { return 1 + m*(1+dataPerMHT) }

// physicalSize is the size on disk of a file holding size plaintext bytes.
func physicalSize(size uint64) uint64 {
	if size <= mdDataSize {
		return NodeSize
	}
	return (dataPhys((size-mdDataSize-1)/NodeSize) + 1) * NodeSize
}

// IsPF reports whether b (the start of a file) carries the protected-file
// magic.
func IsPF(b []byte) bool { return len(b) >= len(Magic) && string(b[:len(Magic)]) == Magic }
