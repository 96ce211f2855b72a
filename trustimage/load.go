// Package trustimage builds, measures, signs and reads veil's trusted images.
//
// An image is a squashfs file system (built by mksquashfs from a tar stream
// veil writes: sorted paths, owner root, time zero), optionally encrypted
// block by block with AES-256-CTR under a per-image subkey, followed by a
// dm-verity (format 1, SHA-256, 4096-byte blocks) superblock and hash tree
// over the stored bytes, so `veritysetup verify` accepts it. The build
// record (build/build.json) holds the root hash, the measurement and an
// Ed25519 signature over the measurement, product id, svn and debuggable
// flag. See docs/formats/image.md.
//
// What it protects against: any change to the stored image (every block is
// checked against the root hash before it is used, and the root hash is in
// the measurement), a changed veil.json (LoadBuild recomputes the
// measurement), a forged record (the signature), and, with an image key,
// the host learning file names or contents.
//
// What it does not protect against: a host that replaces the whole build
// with another validly signed one (the measurement and signer differ, so a
// KMS policy must name them); an encrypted image's size and the equality of
// two images built from the same content and key; rollback to an older
// build with the same signer (svn, checked by policy). The image key must
// come from a trusted place (the KMS after attestation).
package trustimage

import (
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/veil-tee/veil/config"
)

// LoadBuild errors.
var (
	// ErrNotBuilt: the directory has no build (run veil build).
	ErrNotBuilt = errors.New("instance is not built")
	// ErrNoInstance: the directory holds no veil.json at all.
	ErrNoInstance = errors.New("not a veil instance (no veil.json)")
	// ErrConfigChanged: veil.json no longer gives the measurement of the build.
	ErrConfigChanged = errors.New("veil.json does not match the build")
)

// LoadedBuild is a verified build: its record's signature checks and the
// measurement recomputed from the record's image and the instance's
// current veil.json matches the signed one. The image blocks themselves
// are verified when read (Open) or all at once (Reader.Verify).
type LoadedBuild struct {
	Dir         string
	Record      *Record
	Config      *config.Config
	Measurement [32]byte
	MrSigner    [32]byte
	ImagePath   string
}

// ProductID, SVN and Debuggable are the signed metadata.
func (b *LoadedBuild) ProductID() uint16 { return b.Record.ProductID }

// SVN is the signed security version number.
func (b *LoadedBuild) SVN() uint16 { return b.Record.SVN }

// Debuggable is the signed debuggable flag.
func (b *LoadedBuild) Debuggable() bool { return b.Record.Debuggable }

// Encrypted reports whether the image is encrypted.
func (b *LoadedBuild) Encrypted() bool { return b.Record.Image.Encryption != nil }

// RootHash is the image's dm-verity root hash.
func (b *LoadedBuild) RootHash() string { return b.Record.Image.RootHash }

// MeasurementHex and MrSignerHex are the hex forms.
func (b *LoadedBuild) MeasurementHex() string { return hex.EncodeToString(b.Measurement[:]) }

// MrSignerHex is the hex form of MrSigner.
func (b *LoadedBuild) MrSignerHex() string { return hex.EncodeToString(b.MrSigner[:]) }

// Open opens the build's image for verified reading; key is the image key
// (nil for a plain image, or to only Verify an encrypted one).
func (b *LoadedBuild) Open(key []byte) (*Reader, error) {
	return OpenFile(b.ImagePath, b.Record.Image, key)
}

// LoadBuild reads dir/veil.json and dir/build/build.json, checks the
// signature and that the measurement still holds.
func LoadBuild(dir string) (*LoadedBuild, error) {
	data, err := os.ReadFile(filepath.Join(dir, "build", RecordFile))
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, "veil.json")); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", dir, ErrNoInstance)
		}
		return nil, fmt.Errorf("%s: %w", dir, ErrNotBuilt)
	}
	if err != nil {
		return nil, fmt.Errorf("reading build record: %w", err)
	}
	rec, err := ParseRecord(data)
	if err != nil {
		return nil, fmt.Errorf("reading build record: %w", err)
	}
	if rec.Runtime != RuntimeIdentity {
		return nil, fmt.Errorf("reading build record: %w: built for runtime %q, this is %q", ErrBadRecord, rec.Runtime, RuntimeIdentity)
	}
	var signed [32]byte
	m, _ := hex.DecodeString(rec.Measurement)
	copy(signed[:], m)
	mrsigner, err := verifySignature(rec, signed)
	if err != nil {
		return nil, fmt.Errorf("verifying build signature: %w", err)
	}
	cfg, err := config.Load(filepath.Join(dir, config.FileName))
	if err != nil {
		return nil, err
	}
	meas, err := Measure(rec.Image, cfg)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(meas[:], signed[:]) != 1 {
		return nil, fmt.Errorf("%w: measurement is now %x, the build has %s (rebuild with veil build)", ErrConfigChanged, meas, rec.Measurement)
	}
	md := cfg.Metadata
	if md.ProductID != rec.ProductID || md.SVN != rec.SVN || md.Debuggable != rec.Debuggable {
		return nil, fmt.Errorf("%w: metadata differs from the signed record", ErrConfigChanged)
	}
	return &LoadedBuild{
		Dir: dir, Record: rec, Config: cfg, Measurement: meas, MrSigner: mrsigner,
		ImagePath: filepath.Join(dir, "build", ImageFile),
	}, nil
}
