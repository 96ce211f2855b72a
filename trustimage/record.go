package trustimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/veil-tee/veil/config"
)

// Format identifiers (docs/formats/image.md).
const (
	// RecordFormat names the build record format.
	RecordFormat = "veil-build/1"
	// MeasurementFormat names the measured document's layout.
	MeasurementFormat = "veil-measurement/1"
	// RuntimeIdentity names the runtime contract a build is measured for.
	// A runtime whose behaviour towards the measured fields changes must
	// change it, which changes every measurement.
	RuntimeIdentity = "veil-runtime/1"
	// ImageFile is the image's file name in the build directory.
	ImageFile = "rootfs.img"
	// RecordFile is the signed build record's file name.
	RecordFile = "build.json"
	// CipherAES256CTR is the only image cipher.
	CipherAES256CTR = "aes-256-ctr"
)

// ErrBadRecord reports a build record that does not parse or is inconsistent.
var ErrBadRecord = errors.New("bad build record")

// Record is DIR/build/build.json: what was built and who signed it.
type Record struct {
	Format      string     `json:"format"`
	Runtime     string     `json:"runtime"`
	Measurement string     `json:"measurement"`
	ProductID   uint16     `json:"product_id"`
	SVN         uint16     `json:"svn"`
	Debuggable  bool       `json:"debuggable"`
	Image       ImageInfo  `json:"image"`
	Signer      SignerInfo `json:"signer"`
	Signature   string     `json:"signature"` // base64, see SignedMessage
}

// ImageInfo locates and describes the image file.
type ImageInfo struct {
	File       string          `json:"file"`
	Size       int64           `json:"size"`
	DataBlocks uint64          `json:"data_blocks"`
	HashOffset int64           `json:"hash_offset"`
	BlockSize  int             `json:"block_size"`
	Hash       string          `json:"hash"`
	Salt       string          `json:"salt"`
	RootHash   string          `json:"root_hash"`
	Encryption *EncryptionInfo `json:"encryption"`
	// Loads maps each ELF program or library of the image whose
	// dependencies the build resolved to every path the dynamic loader
	// opens to run it (package bom), so that the runtime can read them
	// ahead without parsing ELF. Measured. Absent when there is none.
	Loads map[string][]string `json:"loads,omitempty"`
}

// Bounds of ImageInfo.Loads.
const (
	maxLoadsPrograms = 1 << 16
	maxLoadsPerProg  = 1 << 10
)

// checkLoads checks that every path of a loads map is absolute and clean.
func checkLoads(loads map[string][]string) error {
	if len(loads) > maxLoadsPrograms {
		return fmt.Errorf("%d programs, more than %d", len(loads), maxLoadsPrograms)
	}
	ok := func(p string) bool {
		return path.IsAbs(p) && path.Clean(p) == p && !strings.ContainsRune(p, 0)
	}
	for prog, list := range loads {
		if !ok(prog) {
			return fmt.Errorf("%q is not an absolute clean path", prog)
		}
		if len(list) > maxLoadsPerProg {
			return fmt.Errorf("%s: %d paths, more than %d", prog, len(list), maxLoadsPerProg)
		}
		for _, p := range list {
			if !ok(p) {
				return fmt.Errorf("%s: %q is not an absolute clean path", prog, p)
			}
		}
	}
	return nil
}

// EncryptionInfo describes an encrypted image.
type EncryptionInfo struct {
	Cipher  string `json:"cipher"`
	KeySalt string `json:"key_salt"` // hex; per-image subkey derivation salt
	KeyID   string `json:"key_id"`   // hex; identifies the image key without revealing it
}

// SignerInfo is the signer's public key.
type SignerInfo struct {
	Algorithm string `json:"algorithm"`  // "ed25519"
	PublicKey string `json:"public_key"` // base64 DER SubjectPublicKeyInfo
}

// ParseRecord decodes a build record strictly.
func ParseRecord(data []byte) (*Record, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data", ErrBadRecord)
	}
	if r.Format != RecordFormat {
		return nil, fmt.Errorf("%w: format %q is not %q", ErrBadRecord, r.Format, RecordFormat)
	}
	im := r.Image
	if im.BlockSize != BlockSize || im.Hash != "sha256" || im.File != ImageFile {
		return nil, fmt.Errorf("%w: unsupported image parameters", ErrBadRecord)
	}
	if im.DataBlocks == 0 || im.DataBlocks > 1<<40 || im.HashOffset != int64(im.DataBlocks)*BlockSize {
		return nil, fmt.Errorf("%w: inconsistent data size", ErrBadRecord)
	}
	_, treeBlocks := treeLayout(im.DataBlocks)
	if im.Size != im.HashOffset+int64(1+treeBlocks)*BlockSize {
		return nil, fmt.Errorf("%w: inconsistent image size", ErrBadRecord)
	}
	if _, err := decodeHex(im.Salt, saltSize); err != nil {
		return nil, fmt.Errorf("%w: salt: %v", ErrBadRecord, err)
	}
	if _, err := decodeHex(im.RootHash, hashSize); err != nil {
		return nil, fmt.Errorf("%w: root_hash: %v", ErrBadRecord, err)
	}
	if _, err := decodeHex(r.Measurement, sha256.Size); err != nil {
		return nil, fmt.Errorf("%w: measurement: %v", ErrBadRecord, err)
	}
	if err := checkLoads(im.Loads); err != nil {
		return nil, fmt.Errorf("%w: image.loads: %v", ErrBadRecord, err)
	}
	if e := im.Encryption; e != nil {
		if e.Cipher != CipherAES256CTR {
			return nil, fmt.Errorf("%w: cipher %q is not supported", ErrBadRecord, e.Cipher)
		}
		if _, err := decodeHex(e.KeySalt, 32); err != nil {
			return nil, fmt.Errorf("%w: key_salt: %v", ErrBadRecord, err)
		}
		if _, err := decodeHex(e.KeyID, 16); err != nil {
			return nil, fmt.Errorf("%w: key_id: %v", ErrBadRecord, err)
		}
	}
	return &r, nil
}

// Marshal encodes r as indented JSON that ParseRecord accepts.
func (r *Record) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func decodeHex(s string, n int) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != n || hex.EncodeToString(b) != s {
		return nil, fmt.Errorf("want %d lowercase hex digits", 2*n)
	}
	return b, nil
}

// MeasuredImage is the image part of the measured document.
type MeasuredImage struct {
	Hash       string `json:"hash"`
	BlockSize  int    `json:"block_size"`
	DataBlocks uint64 `json:"data_blocks"`
	Salt       string `json:"salt"`
	RootHash   string `json:"root_hash"`
	Encrypted  bool   `json:"encrypted"`
	// KeySalt binds an encrypted image's subkey derivation; absent for a
	// plain image.
	KeySalt string `json:"key_salt,omitempty"`
	// Loads is ImageInfo.Loads; absent when there is none, so builds
	// without it keep their measurement.
	Loads map[string][]string `json:"loads,omitempty"`
}

// MeasuredDocument is what the measurement is the SHA-256 of, in its
// canonical JSON encoding (config.Canonical).
type MeasuredDocument struct {
	Format  string          `json:"format"`
	Runtime string          `json:"runtime"`
	Image   MeasuredImage   `json:"image"`
	Config  config.Measured `json:"config"`
}

// MeasuredDoc returns the measured document of an image described by im
// and a configuration.
func MeasuredDoc(im ImageInfo, cfg *config.Config) MeasuredDocument {
	keySalt := ""
	if im.Encryption != nil {
		keySalt = im.Encryption.KeySalt
	}
	return MeasuredDocument{
		Format:  MeasurementFormat,
		Runtime: RuntimeIdentity,
		Image: MeasuredImage{
			Hash: im.Hash, BlockSize: im.BlockSize, DataBlocks: im.DataBlocks,
			Salt: im.Salt, RootHash: im.RootHash, Encrypted: im.Encryption != nil,
			KeySalt: keySalt, Loads: im.Loads,
		},
		Config: cfg.Measured(),
	}
}

// Measure returns the measurement (veil's mrenclave) of an image and a
// configuration: SHA-256 of the canonical encoding of MeasuredDoc.
func Measure(im ImageInfo, cfg *config.Config) ([32]byte, error) {
	b, err := config.Canonical(MeasuredDoc(im, cfg))
	if err != nil {
		return [32]byte{}, fmt.Errorf("encoding the measured document: %w", err)
	}
	return sha256.Sum256(b), nil
}
