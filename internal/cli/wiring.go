package cli

// This file connects the packages that were built apart: the key service's
// workload login and release policies run on the attestation layer, its
// --from-instance reads built images, and sealed files accept kms: keys.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/tsm"
	"github.com/veil-tee/veil/attest/verifier"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/seal"
	"github.com/veil-tee/veil/trustimage"
)

// WorkloadAuthOptions are the trust inputs of `veil kms serve` for workloads.
type WorkloadAuthOptions struct {
	Dev        bool   // trust the local sim platform (veil sim init)
	SimCA      string // a sim platform CA certificate to trust (PEM)
	Collateral string // Intel PCS collateral directory for SGX and TDX evidence
}

// attestWorkloadAuth builds the key service's workload verifier and policy
// evaluator over the attestation packages.
func attestWorkloadAuth(o WorkloadAuthOptions) (kms.WorkloadVerifier, kms.PolicyEvaluator, error) {
	v, err := evidenceVerifier(o.Dev, o.SimCA, o.Collateral)
	if err != nil {
		return nil, nil, err
	}
	return &ratlsWorkloads{peer: &ratls.Peer{Verifier: v, DeferPolicy: true, RequireRuntime: true}}, attestPolicies{}, nil
}

// evidenceVerifier verifies sim evidence of the local platform (localSim:
// created if need be) and of the platform whose CA is in the file simCA,
// SGX and TDX evidence with the Intel PCS collateral in the directory
// collateral, and SEV-SNP evidence with its defaults.
func evidenceVerifier(localSim bool, simCA, collateral string) (attest.Verifier, error) {
	var vo verifier.Options
	if localSim {
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
	if simCA != "" {
		ca, err := sim.LoadCAFile(simCA)
		if err != nil {
			return nil, err
		}
		vo.SimRoots = append(vo.SimRoots, ca)
	}
	if collateral != "" {
		col, err := pcs.LoadDir(collateral)
		if err != nil {
			return nil, fmt.Errorf("loading collateral: %w", err)
		}
		vo.Collateral = col
	}
	return verifier.New(vo), nil
}

// ratlsWorkloads verifies a workload's RA-TLS certificate and its evidence;
// the decision is left to each key's policy.
type ratlsWorkloads struct{ peer *ratls.Peer }

func (r *ratlsWorkloads) VerifyPeer(certs []*x509.Certificate) (kms.Workload, error) {
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

// attestPolicies evaluates release policies written in the attestation
// policy language (docs/attestation.md).
type attestPolicies struct{}

func (attestPolicies) ValidatePolicy(doc []byte) error {
	_, err := attest.ParsePolicy(bytes.NewReader(doc))
	return err
}

func (attestPolicies) Evaluate(doc []byte, w kms.Workload) (bool, []string) {
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

// imageInstanceIdentity reads a built instance's verified identity.
func imageInstanceIdentity(dir string) (InstanceIdentity, error) {
	b, err := trustimage.LoadBuild(dir)
	if err != nil {
		return InstanceIdentity{}, err
	}
	return InstanceIdentity{
		Measurement: hex.EncodeToString(b.Measurement[:]),
		Signer:      hex.EncodeToString(b.MrSigner[:]),
		ProductID:   b.ProductID(),
		SVN:         b.SVN(),
	}, nil
}

// kmsKeySource resolves kms:KEY references with the key service configured
// like `veil kms` (flags are not available here: environment or profile).
type kmsKeySource struct{}

func (kmsKeySource) slot(ref string) (*kmsSlot, error) {
	cl, err := (&kmsOpts{}).client()
	if err != nil {
		return nil, err
	}
	return &kmsSlot{&client.Slot{Client: cl, KeyRef: ref}}, nil
}

func (k kmsKeySource) wrapper(_ context.Context, ref string) (seal.KeyWrapper, error) {
	return k.slot(ref)
}

func (k kmsKeySource) unwrapper(_ context.Context, ref string) (seal.KeyUnwrapper, error) {
	return k.slot(ref)
}

// auto opens kms slots without --key when a key service is configured.
func (k kmsKeySource) auto(context.Context) (seal.KeyUnwrapper, error) {
	s, err := k.slot("")
	if err != nil {
		return nil, nil // no key service configured: kms slots stay closed
	}
	return s, nil
}

// kmsSlot reports a slot the key service refuses to open as seal.ErrWrongKey.
type kmsSlot struct{ *client.Slot }

// WrapKey adds the key service hints (unreachable, unknown key) to errors.
func (s *kmsSlot) WrapKey(dek, binding []byte) (seal.Slot, error) {
	sl, err := s.Slot.WrapKey(dek, binding)
	return sl, kmsErr(err)
}

func (s *kmsSlot) UnwrapKey(sl seal.Slot, binding []byte) ([]byte, error) {
	dek, err := s.Slot.UnwrapKey(sl, binding)
	if err != nil && !errors.Is(err, seal.ErrSlotMismatch) && (errors.Is(err, client.ErrDecryptFailed) || errors.Is(err, client.ErrPolicyDenied) || errors.Is(err, client.ErrKeyNotFound)) {
		return nil, fmt.Errorf("%w: %w", seal.ErrWrongKey, kmsErr(err))
	}
	return dek, kmsErr(err)
}

// kmsAttestation makes the key service's evidence source for `veil kms
// serve --attest`: configfs-tsm inside a confidential VM, else the local
// sim platform, reporting the SHA-256 of this veil binary as the
// service's measurement. It returns the measurement it reports (zero for
// configfs-tsm: the TEE measures the VM) and the TEE.
func kmsAttestation(cert *tls.Certificate) (func(context.Context, []byte) (*api.Attestation, error), []byte, attest.TEE, error) {
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
		dir, err := sim.DefaultDir()
		if err != nil {
			return nil, nil, "", err
		}
		p, err := sim.Load(dir)
		if err != nil {
			return nil, nil, "", withHint(fmt.Errorf("--attest: no TEE found (configfs-tsm) and no sim platform: %w", err), "for development create the software platform: veil sim init")
		}
		exe, err := os.Executable()
		if err != nil {
			return nil, nil, "", err
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
