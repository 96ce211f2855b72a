package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/store"
)

// newMaterial generates the key material of a version for spec: 32 random
// bytes for AES, a PKCS #8 private key for the asymmetric specs.
func newMaterial(spec string) ([]byte, error) {
	switch spec {
	case api.SpecAES256GCM:
		m := make([]byte, 32)
		_, err := rand.Read(m)
		return m, err
	case api.SpecECP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	case api.SpecRSA3072:
		k, err := rsa.GenerateKey(rand.Reader, 3072)
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(k)
	}
	return nil, fail(ErrInvalidField, "field \"spec\": %q is not supported (supported: %s, %s, %s)", spec, api.SpecAES256GCM, api.SpecECP256, api.SpecRSA3072)
}

func needSpec(k *keyRecord, op string, specs ...string) error {
	for _, s := range specs {
		if k.Spec == s {
			return nil
		}
	}
	return fail(ErrInvalidState, "key %s is %s, which does not support %s", k.ID, k.Spec, op)
}

// signer opens the private key of one version.
func (s *Service) signer(kr *keyring, k *keyRecord, version int) (crypto.Signer, int, error) {
	if version == 0 {
		version = k.Primary
	}
	for _, v := range k.Versions {
		if v.Version != version || v.Material == nil {
			continue
		}
		der, err := kr.open(fmt.Sprintf("key/%s/%d", k.ID, v.Version), v.Material)
		if err != nil {
			return nil, 0, err
		}
		priv, err := x509.ParsePKCS8PrivateKey(der)
		clear(der)
		if err != nil {
			return nil, 0, fmt.Errorf("parsing stored key %s/%d: %w", k.ID, version, err)
		}
		sg, ok := priv.(crypto.Signer)
		if !ok {
			return nil, 0, fmt.Errorf("stored key %s/%d is not a signer", k.ID, version)
		}
		return sg, version, nil
	}
	return nil, 0, fail(ErrInvalidField, "key %s has no version %d", k.ID, version)
}

func digestOf(message, digest []byte) ([]byte, error) {
	switch {
	case (message == nil) == (digest == nil):
		return nil, fail(ErrInvalidField, "give exactly one of the fields \"message\" and \"digest\"")
	case digest != nil && len(digest) != sha256.Size:
		return nil, fail(ErrInvalidField, "field \"digest\" must be a %d-byte SHA-256 digest", sha256.Size)
	case digest != nil:
		return digest, nil
	case len(message) > MaxPlaintext:
		return nil, fail(ErrInvalidField, "field \"message\" is longer than %d bytes; send its SHA-256 digest", MaxPlaintext)
	}
	d := sha256.Sum256(message)
	return d[:], nil
}

var pssOpts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}

// useAsym runs fn on a usable asymmetric key the caller may use.
func (s *Service) useAsym(ctx context.Context, c Caller, ref, op string, specs []string, fn func(kr *keyring, k *keyRecord, e *audit.Entry) error) error {
	if err := require(c, KindApp, KindWorkload); err != nil {
		return err
	}
	return s.read(ctx, c, audit.Entry{Op: op}, func(tx store.Tx, kr *keyring, e *audit.Entry) error {
		k, err := s.loadKey(tx, c, ref)
		if err != nil {
			return err
		}
		e.Key, e.Owner, e.KeyVersion = k.ID, k.Owner, k.Primary
		if err := needSpec(k, op, specs...); err != nil {
			return err
		}
		if err := usable(k); err != nil {
			return err
		}
		if err := s.authorizeUse(tx, c, "key "+k.ID, k.Owner, k.Policies); err != nil {
			return err
		}
		return fn(kr, k, e)
	})
}

// Sign signs a message or digest with the primary version of an EC or RSA key.
func (s *Service) Sign(ctx context.Context, c Caller, ref string, req api.SignRequest) (api.SignResponse, error) {
	var out api.SignResponse
	d, err := digestOf(req.Message, req.Digest)
	if err != nil {
		return out, err
	}
	err = s.useAsym(ctx, c, ref, "key.sign", []string{api.SpecECP256, api.SpecRSA3072}, func(kr *keyring, k *keyRecord, _ *audit.Entry) error {
		sg, v, err := s.signer(kr, k, 0)
		if err != nil {
			return err
		}
		var opts crypto.SignerOpts = crypto.SHA256
		if k.Spec == api.SpecRSA3072 {
			opts = pssOpts
		}
		sig, err := sg.Sign(rand.Reader, d, opts)
		out = api.SignResponse{KeyID: k.ID, KeyVersion: v, Signature: sig}
		return err
	})
	return out, err
}

// Verify checks a signature made by Sign with a given (or the primary) version.
func (s *Service) Verify(ctx context.Context, c Caller, ref string, req api.VerifyRequest) (api.VerifyResponse, error) {
	var out api.VerifyResponse
	d, err := digestOf(req.Message, req.Digest)
	if err != nil {
		return out, err
	}
	err = s.useAsym(ctx, c, ref, "key.verify", []string{api.SpecECP256, api.SpecRSA3072}, func(kr *keyring, k *keyRecord, e *audit.Entry) error {
		sg, v, err := s.signer(kr, k, req.KeyVersion)
		if err != nil {
			return err
		}
		e.KeyVersion = v
		out = api.VerifyResponse{KeyID: k.ID, KeyVersion: v}
		switch pub := sg.Public().(type) {
		case *ecdsa.PublicKey:
			out.Valid = ecdsa.VerifyASN1(pub, d, req.Signature)
		case *rsa.PublicKey:
			out.Valid = rsa.VerifyPSS(pub, crypto.SHA256, d, req.Signature, pssOpts) == nil
		}
		return nil
	})
	return out, err
}

// PublicKey returns the PEM public key of a version of an asymmetric key.
func (s *Service) PublicKey(ctx context.Context, c Caller, ref string, version int) (api.PublicKeyResponse, error) {
	var out api.PublicKeyResponse
	err := s.useAsym(ctx, c, ref, "key.public-key", []string{api.SpecECP256, api.SpecRSA3072}, func(kr *keyring, k *keyRecord, e *audit.Entry) error {
		sg, v, err := s.signer(kr, k, version)
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKIXPublicKey(sg.Public())
		if err != nil {
			return err
		}
		e.KeyVersion = v
		out = api.PublicKeyResponse{KeyID: k.ID, KeyVersion: v, Spec: k.Spec,
			PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
		return nil
	})
	return out, err
}

// AsymmetricDecrypt decrypts RSA-OAEP (SHA-256) ciphertext made with the
// public key of an RSA key version.
func (s *Service) AsymmetricDecrypt(ctx context.Context, c Caller, ref string, req api.AsymmetricDecryptRequest) (api.DecryptResponse, error) {
	var out api.DecryptResponse
	err := s.useAsym(ctx, c, ref, "key.asymmetric-decrypt", []string{api.SpecRSA3072}, func(kr *keyring, k *keyRecord, e *audit.Entry) error {
		sg, v, err := s.signer(kr, k, req.KeyVersion)
		if err != nil {
			return err
		}
		e.KeyVersion = v
		pt, err := rsa.DecryptOAEP(sha256.New(), nil, sg.(*rsa.PrivateKey), req.Ciphertext, nil)
		if err != nil {
			return fail(ErrDecryptFailed, "the ciphertext does not decrypt under key %s version %d", k.ID, v)
		}
		out = api.DecryptResponse{KeyID: k.ID, KeyVersion: v, Plaintext: pt}
		return nil
	})
	return out, err
}
