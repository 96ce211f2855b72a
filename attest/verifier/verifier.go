// Package verifier assembles one attest.Verifier for every backend from
// trust roots and collateral, for the key service and the command line.
//
// What it protects against: evidence of a TEE type whose trust roots were
// not configured is refused (attest.ErrNoBackend) rather than verified
// against defaults the caller did not choose — except Intel's and AMD's
// embedded roots, which are the defaults of their backends.
//
// What it does not protect against: it applies no policy; call
// Policy.Enforce on the claims.
package verifier

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/sgx"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/snp"
	"github.com/veil-tee/veil/attest/tdx"
)

// Options are the trust inputs of every backend.
type Options struct {
	// SimRoots are trusted sim platform CAs (sim.LoadCA). Without them sim
	// evidence cannot be verified at all.
	SimRoots []*x509.Certificate
	// IntelRoots override Intel's SGX root CA (SGX and TDX).
	IntelRoots []*x509.Certificate
	// Collateral is Intel PCS collateral for SGX and TDX (pcs.LoadDir).
	// Without it SGX and TDX evidence is refused.
	Collateral *pcs.Collateral
	// CollateralWindow: see sgx.Options.
	CollateralWindow time.Duration
	// SNP configures SEV-SNP verification (VCEK, AMD roots, network).
	SNP snp.Options
	// Now returns the verification time; nil means time.Now.
	Now func() time.Time
}

// New returns a verifier that dispatches on the evidence's TEE type.
func New(o Options) attest.Multi {
	m := attest.Multi{}
	if len(o.SimRoots) > 0 {
		v := sim.NewVerifier(o.SimRoots...)
		v.Now = o.Now
		m[attest.TEESim] = v
	}
	if o.Collateral != nil {
		m[attest.TEESGX] = sgx.NewVerifier(sgx.Options{Collateral: o.Collateral, Roots: o.IntelRoots, Now: o.Now, CollateralWindow: o.CollateralWindow})
		m[attest.TEETDX] = tdx.NewVerifier(tdx.Options{Collateral: o.Collateral, Roots: o.IntelRoots, Now: o.Now, CollateralWindow: o.CollateralWindow})
	}
	so := o.SNP
	if so.Now == nil {
		so.Now = o.Now
	}
	m[attest.TEESNP] = snp.NewVerifier(so)
	return m
}

// VerifyRaw detects the TEE type of a raw quote or report, verifies it
// with v and returns the claims.
func VerifyRaw(ctx context.Context, v attest.Verifier, raw, aux []byte) (*attest.Claims, error) {
	tee, err := attest.Detect(raw)
	if err != nil {
		return nil, err
	}
	return v.Verify(ctx, &attest.Evidence{TEE: tee, Quote: raw, Aux: aux})
}

// PlatformOf reads, without verifying anything, what is needed to fetch
// collateral for an SGX or TDX quote: its TEE type, the FMSPC from its PCK
// certificate and the PCK issuer CA ("platform" or "processor").
func PlatformOf(raw []byte) (tee attest.TEE, fmspc, ca string, err error) {
	tee, err = attest.Detect(raw)
	if err != nil {
		return "", "", "", err
	}
	var chain []*x509.Certificate
	switch tee {
	case attest.TEESGX:
		q, err := sgx.ParseQuote(raw)
		if err != nil {
			return "", "", "", err
		}
		if chain, err = sgx.PCKChain(q); err != nil {
			return "", "", "", err
		}
	case attest.TEETDX:
		q, err := tdx.ParseQuote(raw)
		if err != nil {
			return "", "", "", err
		}
		if chain, err = tdx.PCKChain(q); err != nil {
			return "", "", "", err
		}
	default:
		return tee, "", "", fmt.Errorf("%s evidence needs no Intel collateral: %w", tee, attest.ErrUnsupported)
	}
	info, err := pcs.ParsePCKExtensions(chain[0])
	if err != nil {
		return "", "", "", err
	}
	ca = "platform"
	if strings.Contains(chain[0].Issuer.CommonName, "Processor") {
		ca = "processor"
	}
	return tee, info.FMSPC, ca, nil
}
