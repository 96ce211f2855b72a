// Package selfattest makes the key service's own evidence (`veil kms serve
// --attest`): in answer to a client's nonce, evidence that binds the
// service's TLS key, so a workload can check that it talks to a key
// service running in a TEE before it sends anything (veil.json kms[].attest).
// Inside a confidential VM the evidence comes from configfs-tsm; elsewhere
// from the local sim platform, reporting the SHA-256 of the service's
// binary as its measurement.
//
// It protects against a key service impostor that holds neither the TLS
// key nor a TEE: the evidence binds the certificate's public key and the
// client's fresh nonce, so it can be neither moved to another key nor
// replayed. It does not protect against a host that controls the sim
// platform (its key is on the host: development only), nor does it decide
// anything: the client checks the evidence against its own policy.
package selfattest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/tsm"
	"github.com/veil-tee/veil/kms/api"
)

// ErrNoPlatform: neither configfs-tsm nor a sim platform is available.
var ErrNoPlatform = errors.New("no TEE found (configfs-tsm) and no sim platform")

// Options say where the sim backend looks; zero values are the defaults.
type Options struct {
	SimDir string // sim platform directory (default sim.DefaultDir)
	Binary string // file whose SHA-256 the sim evidence reports (default this executable)
}

// Source answers a nonce with evidence binding the service's TLS key.
type Source func(ctx context.Context, nonce []byte) (*api.Attestation, error)

// New returns the evidence source for cert, the measurement it reports
// (nil with configfs-tsm: the TEE measures the VM) and its TEE.
func New(cert *tls.Certificate, o Options) (Source, []byte, attest.TEE, error) {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, nil, "", fmt.Errorf("parsing the TLS certificate: %w", err)
	}
	spki := leaf.RawSubjectPublicKeyInfo
	var iss attest.Issuer
	var measurement []byte
	if tsm.Available() {
		if iss, err = tsm.NewLinuxIssuer(""); err != nil {
			return nil, nil, "", err
		}
	} else {
		dir := o.SimDir
		if dir == "" {
			if dir, err = sim.DefaultDir(); err != nil {
				return nil, nil, "", err
			}
		}
		p, err := sim.Load(dir)
		if err != nil {
			return nil, nil, "", fmt.Errorf("%w: %w", ErrNoPlatform, err)
		}
		exe := o.Binary
		if exe == "" {
			if exe, err = os.Executable(); err != nil {
				return nil, nil, "", err
			}
		}
		f, err := os.Open(exe)
		if err != nil {
			return nil, nil, "", err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return nil, nil, "", fmt.Errorf("measuring %s: %w", exe, err)
		}
		var id sim.Identity
		copy(id.Measurement[:], h.Sum(nil))
		measurement = id.Measurement[:]
		iss = p.Issuer(id)
	}
	return func(ctx context.Context, nonce []byte) (*api.Attestation, error) {
		ev, err := ratls.BindKey(ctx, iss, spki, nonce)
		if err != nil {
			return nil, err
		}
		return &api.Attestation{TEE: string(iss.TEE()), Evidence: ev}, nil
	}, measurement, iss.TEE(), nil
}
