package trustimage

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/veil-tee/veil/internal/fsutil"
)

// ErrBadSignature reports a build record whose signature does not verify.
var ErrBadSignature = errors.New("build signature does not verify")

// ErrBadKey reports a key file veil cannot use.
var ErrBadKey = errors.New("bad key file")

// signedContext starts every signed message (domain separation).
const signedContext = "veil signed build v1\x00"

// SignedMessage is the exact byte string a build signature covers:
// "veil signed build v1" 0x00 || measurement (32) || product_id (uint16 BE)
// || svn (uint16 BE) || debuggable (1 byte, 0 or 1).
func SignedMessage(measurement [32]byte, productID, svn uint16, debuggable bool) []byte {
	m := make([]byte, 0, len(signedContext)+32+5)
	m = append(m, signedContext...)
	m = append(m, measurement[:]...)
	m = binary.BigEndian.AppendUint16(m, productID)
	m = binary.BigEndian.AppendUint16(m, svn)
	if debuggable {
		m = append(m, 1)
	} else {
		m = append(m, 0)
	}
	return m
}

// SignKey is a build signing key (Ed25519).
type SignKey struct {
	priv ed25519.PrivateKey
}

// GenerateSignKey creates a new signing key.
func GenerateSignKey() (*SignKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &SignKey{priv: priv}, nil
}

// PublicKeyDER is the signer's public key as DER SubjectPublicKeyInfo.
func (k *SignKey) PublicKeyDER() []byte {
	der, _ := x509.MarshalPKIXPublicKey(k.priv.Public())
	return der
}

// MrSigner is SHA-256 of the DER SubjectPublicKeyInfo of the public key.
func (k *SignKey) MrSigner() [32]byte { return sha256.Sum256(k.PublicKeyDER()) }

// MarshalPEM encodes the private key as a PKCS #8 "PRIVATE KEY" PEM block.
func (k *SignKey) MarshalPEM() []byte {
	der, _ := x509.MarshalPKCS8PrivateKey(k.priv)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// ParseSignKey decodes a PKCS #8 PEM Ed25519 private key.
func ParseSignKey(data []byte) (*SignKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%w: not a PEM PRIVATE KEY", ErrBadKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: not an Ed25519 key", ErrBadKey)
	}
	return &SignKey{priv: priv}, nil
}

// WriteSignKey writes a new signing key to path (mode 0600, refusing to
// overwrite) and returns it.
func WriteSignKey(path string) (*SignKey, error) {
	k, err := GenerateSignKey()
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFile(path, k.MarshalPEM(), 0o600, false); err != nil {
		return nil, fmt.Errorf("writing signing key: %w", err)
	}
	return k, nil
}

// LoadSignKey reads a signing key file.
func LoadSignKey(path string) (*SignKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	k, err := ParseSignKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Sign signs the build identity.
func (k *SignKey) Sign(measurement [32]byte, productID, svn uint16, debuggable bool) []byte {
	return ed25519.Sign(k.priv, SignedMessage(measurement, productID, svn, debuggable))
}

// verifySignature checks r's signature and returns mrsigner.
func verifySignature(r *Record, measurement [32]byte) ([32]byte, error) {
	if r.Signer.Algorithm != "ed25519" {
		return [32]byte{}, fmt.Errorf("%w: algorithm %q is not supported", ErrBadSignature, r.Signer.Algorithm)
	}
	der, err := base64.StdEncoding.DecodeString(r.Signer.PublicKey)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: public key is not base64", ErrBadSignature)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: parsing public key: %v", ErrBadSignature, err)
	}
	edpub, ok := pub.(ed25519.PublicKey)
	if !ok {
		return [32]byte{}, fmt.Errorf("%w: public key is not Ed25519", ErrBadSignature)
	}
	sig, err := base64.StdEncoding.DecodeString(r.Signature)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: signature is not base64", ErrBadSignature)
	}
	if !ed25519.Verify(edpub, SignedMessage(measurement, r.ProductID, r.SVN, r.Debuggable), sig) {
		return [32]byte{}, ErrBadSignature
	}
	return sha256.Sum256(der), nil
}

// ImageKeySize is the size of an image key file's content.
const ImageKeySize = 32

// WriteImageKey writes 32 random bytes to path (mode 0600, refusing to
// overwrite).
func WriteImageKey(path string) error {
	key := make([]byte, ImageKeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	defer clear(key)
	if err := fsutil.WriteFile(path, key, 0o600, false); err != nil {
		return fmt.Errorf("writing image key: %w", err)
	}
	return nil
}

// LoadImageKey reads an image key file (exactly 32 bytes). It refuses files
// that other users can read.
func LoadImageKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading image key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: %w: mode %v lets other users read it (want 0600)", path, ErrBadKey, fi.Mode().Perm())
	}
	if !fi.Mode().IsRegular() || fi.Size() != ImageKeySize {
		return nil, fmt.Errorf("%s: %w: want a regular file of exactly %d bytes", path, ErrBadKey, ImageKeySize)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading image key: %w", err)
	}
	if len(key) != ImageKeySize {
		return nil, fmt.Errorf("%s: %w: want exactly %d bytes", path, ErrBadKey, ImageKeySize)
	}
	return key, nil
}
