// Package workload authenticates workloads to the key service and decides
// its release policies: Verifier turns the RA-TLS client certificate a
// workload presents into a kms.Workload, and Policies evaluates release
// policies, written in the attestation policy language
// (docs/attestation.md), against the claims that certificate proved.
//
// It protects against a client that claims a workload identity it cannot
// prove: a certificate without evidence, evidence from a platform whose
// root is not trusted, evidence bound to another key, evidence a workload
// requested itself (through /dev/attestation) rather than the runtime's
// own, and certificates outside their validity. It does not protect
// against a compromised TEE or platform root that signs false evidence,
// nor against a permissive policy (allow_debug, allow_sim, no measurement):
// Verifier decides nothing by itself, each key's policy does. Sim
// evidence is for development only; its platform key is on the host.
package workload

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/verifier"
	"github.com/veil-tee/veil/kms"
)

// Trust names the roots evidence is verified against.
type Trust struct {
	// LocalSim trusts the local sim platform (veil sim init), created if
	// need be.
	LocalSim bool
	// SimCA, when set, is a sim platform CA certificate file (PEM) to trust.
	SimCA string
	// Collateral, when set, is an Intel PCS collateral directory for SGX
	// and TDX evidence.
	Collateral string
}

// EvidenceVerifier verifies sim evidence of the platforms t trusts, SGX
// and TDX evidence with t's collateral, and SEV-SNP evidence with its
// defaults. It serves for workloads and for a key service's own evidence.
func (t Trust) EvidenceVerifier() (attest.Verifier, error) {
	var vo verifier.Options
	if t.LocalSim {
		dir, err := sim.DefaultDir()
		if err != nil {
			return nil, err
		}
		p, _, err := sim.Init(dir)
		if err != nil {
			return nil, fmt.Errorf("initialising the sim platform: %w", err)
		}
		vo.SimRoots = append(vo.SimRoots, p.CA)
	}
	if t.SimCA != "" {
		ca, err := sim.LoadCAFile(t.SimCA)
		if err != nil {
			return nil, err
		}
		vo.SimRoots = append(vo.SimRoots, ca)
	}
	if t.Collateral != "" {
		col, err := pcs.LoadDir(t.Collateral)
		if err != nil {
			return nil, fmt.Errorf("loading collateral: %w", err)
		}
		vo.Collateral = col
	}
	return verifier.New(vo), nil
}

// New returns the key service's workload verifier and policy evaluator
// over the roots t trusts.
func New(t Trust) (*Verifier, Policies, error) {
	v, err := t.EvidenceVerifier()
	if err != nil {
		return nil, Policies{}, err
	}
	return NewVerifier(v), Policies{}, nil
}

// Verifier verifies a workload's RA-TLS certificate and its evidence; the
// decision is left to each key's policy. It implements kms.WorkloadVerifier.
type Verifier struct{ peer *ratls.Peer }

// NewVerifier returns a Verifier that checks evidence with v and accepts
// only the runtime's own certificates.
func NewVerifier(v attest.Verifier) *Verifier {
	return &Verifier{peer: &ratls.Peer{Verifier: v, DeferPolicy: true, RequireRuntime: true}}
}

// NewEnclaveVerifier returns a Verifier for enclaves that attest
// themselves, as Gramine workloads do for secret provisioning: it accepts
// RA-TLS certificates whose evidence the enclave asked for (no runtime
// claim), at the time now returns (nil: time.Now). The evidence must still
// verify and bind the certificate's key; who may have what is decided by
// each secret's policy, which should name the enclave's measurement.
func NewEnclaveVerifier(v attest.Verifier, now func() time.Time) *Verifier {
	return &Verifier{peer: &ratls.Peer{Verifier: v, DeferPolicy: true, Now: now}}
}

// VerifyPeer authenticates the workload whose certificate chain (leaf
// first) was presented in the TLS handshake.
func (r *Verifier) VerifyPeer(certs []*x509.Certificate) (kms.Workload, error) {
	if len(certs) == 0 {
		return kms.Workload{}, errors.New("no client certificate")
	}
	c, err := r.peer.VerifyCertificate(context.Background(), certs[0])
	if err != nil {
		return kms.Workload{}, err
	}
	return kms.Workload{
		TEE: string(c.TEE), Measurement: hex.EncodeToString(c.Measurement), Signer: hex.EncodeToString(c.Signer),
		ProductID: c.ProductID, SVN: c.SVN, Debug: c.Debug, Claims: c,
	}, nil
}

// Policies evaluates release policies written in the attestation policy
// language. It implements kms.PolicyEvaluator and kms.PolicyValidator.
type Policies struct{}

// ValidatePolicy reports whether doc is a valid policy document.
func (Policies) ValidatePolicy(doc []byte) error {
	_, err := attest.ParsePolicy(bytes.NewReader(doc))
	return err
}

// Evaluate decides doc for w; a workload whose claims were not verified
// (w.Claims nil) never satisfies a policy.
func (Policies) Evaluate(doc []byte, w kms.Workload) (bool, []string) {
	p, err := attest.ParsePolicy(bytes.NewReader(doc))
	if err != nil {
		return false, []string{"policy: " + err.Error()}
	}
	if w.Claims == nil {
		return false, []string{"claims: the workload's evidence was not verified"}
	}
	ok, unmet := p.Evaluate(w.Claims)
	reasons := make([]string, len(unmet))
	for i, u := range unmet {
		reasons[i] = u.Field + ": " + u.Reason
	}
	return ok, reasons
}

var (
	_ kms.WorkloadVerifier = (*Verifier)(nil)
	_ kms.PolicyEvaluator  = Policies{}
	_ kms.PolicyValidator  = Policies{}
)
