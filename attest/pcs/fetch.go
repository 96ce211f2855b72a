package pcs

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/veil-tee/veil/attest"
)

// IntelPCS is the base URL of Intel's Provisioning Certification Service.
const IntelPCS = "https://api.trustedservices.intel.com"

// FetchOptions say what to fetch from a PCS or PCCS.
type FetchOptions struct {
	// BaseURL is the service, e.g. IntelPCS or "https://pccs.example:8081".
	BaseURL string
	// TDX selects the TDX endpoints (TDX TCB info, TD_QE identity).
	TDX bool
	// FMSPC is the platform's FMSPC (hex), from its PCK certificate.
	FMSPC string
	// CA is "platform" or "processor" (the PCK issuer) to fetch the PCK CRL;
	// empty skips CRLs.
	CA string
	// Client is the HTTP client; nil means http.DefaultClient.
	Client *http.Client
}

// maxResponse bounds one PCS response.
const maxResponse = 1 << 20

// Fetch gets TCB info, QE identity, their issuer chain and, if CA is set,
// the PCK CRL from a PCS or PCCS (API v4). The responses are parsed exactly
// as files in a collateral directory; signatures are checked by the
// verifier, so the service need not be trusted.
func Fetch(ctx context.Context, o FetchOptions) (*Collateral, error) {
	client := o.Client
	if client == nil {
		client = http.DefaultClient
	}
	base := strings.TrimRight(o.BaseURL, "/")
	kind := "sgx"
	if o.TDX {
		kind = "tdx"
	}
	c := &Collateral{}
	get := func(path, chainHeader string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("fetching collateral: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("fetching %s: HTTP %s: %w", path, resp.Status, attest.ErrCollateral)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
		if err != nil {
			return fmt.Errorf("fetching %s: %w", path, err)
		}
		if len(body) > maxResponse {
			return fmt.Errorf("fetching %s: response larger than %d bytes: %w", path, maxResponse, attest.ErrCollateral)
		}
		if ok, err := c.Add(path, body); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("fetching %s: response is not collateral: %w", path, attest.ErrCollateral)
		}
		if chainHeader != "" {
			h := resp.Header.Get(chainHeader)
			if h == "" {
				return fmt.Errorf("fetching %s: no %s header: %w", path, chainHeader, attest.ErrCollateral)
			}
			pemChain, err := url.QueryUnescape(h)
			if err != nil {
				return fmt.Errorf("fetching %s: %s header: %v: %w", path, chainHeader, err, attest.ErrCollateral)
			}
			if _, err := c.Add(path+" "+chainHeader, []byte(pemChain)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := get("/"+kind+"/certification/v4/tcb?fmspc="+url.QueryEscape(o.FMSPC), "TCB-Info-Issuer-Chain"); err != nil {
		return nil, err
	}
	if err := get("/"+kind+"/certification/v4/qe/identity", "SGX-Enclave-Identity-Issuer-Chain"); err != nil {
		return nil, err
	}
	if o.CA != "" {
		if err := get("/sgx/certification/v4/pckcrl?ca="+url.QueryEscape(o.CA)+"&encoding=der", ""); err != nil {
			return nil, err
		}
	}
	return c, nil
}
