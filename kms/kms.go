// Package kms is the veil key service: customer master keys, envelope
// encryption, versioned secrets and release policies, served over an HTTPS
// JSON API to three kinds of callers — the admin (a bearer token), apps
// (data owners, HMAC-signed requests) and workloads (an attested RA-TLS
// client certificate whose claims are their identity).
//
// What it protects against: a stolen data directory (all key material,
// secrets and app signing keys are encrypted under a root key that is never
// stored in the clear outside --dev; the root key is split with Shamir's
// scheme and the server starts sealed); whoever can write the data
// directory without the root key (every record that decides access is
// MACed under the root key and refused by name when it fails; a state
// digest of those records in the MACed audit head reveals deleted and
// rolled-back records; the audit log is a hash chain anchored by a MACed
// genesis and head, and signed checkpoints reveal a rollback of the whole
// store); a network attacker
// (TLS 1.3 only; app requests signed over method, path, time, nonce and
// body, replays refused within the time window, per app); an
// unauthenticated caller disturbing an unseal (shares are checked against
// commitments stored at init); one app reaching another's objects (its
// policies on another app's key admit nothing); a workload whose claims do
// not satisfy a key's policy; and the admin, who can enroll, disable and
// re-key apps, read the audit log and revoke policies, but never use keys
// or attach or replace a policy, so it cannot admit a workload of its own.
// What it does not protect against: an attacker who controls the running
// server process or its memory or holds the root key; a consistent
// rollback of the whole store (revealed only against a checkpoint the
// operator kept); denial of service by whoever can write the store (any
// damage found stops the service); a compromised app key until the app
// rotates it or the admin disables the app.
//
// Attestation is a seam: WorkloadVerifier turns a client certificate chain
// into a Workload, PolicyEvaluator decides a release policy; both are
// provided by the attestation packages. Storage is a seam too (kms/store).
package kms

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"

	"github.com/veil-tee/veil/attest"
)

// Workload is the identity of an attested workload: the verified claims of
// its evidence. Hex fields are lower-case.
type Workload struct {
	TEE         string `json:"tee"`
	Measurement string `json:"measurement"`
	Signer      string `json:"signer"`
	ProductID   uint16 `json:"product_id"`
	SVN         uint16 `json:"svn"`
	Debug       bool   `json:"debug"`
	// Claims are the verified claims in full (TCB status, platform, TDX
	// and SNP fields) for policy evaluation; nil for test verifiers.
	Claims *attest.Claims `json:"-"`
}

// WorkloadVerifier authenticates a workload from the certificate chain it
// presented in the TLS handshake (an RA-TLS leaf first). It returns an
// error when the evidence does not verify.
type WorkloadVerifier interface {
	VerifyPeer(certs []*x509.Certificate) (Workload, error)
}

// PolicyEvaluator decides whether a workload satisfies a release policy
// document. unmet lists, in words, each condition that failed.
type PolicyEvaluator interface {
	Evaluate(policyJSON []byte, w Workload) (ok bool, unmet []string)
}

// PolicyValidator is optionally implemented by a PolicyEvaluator to reject
// a policy document when it is stored rather than when it is first used.
type PolicyValidator interface {
	ValidatePolicy(policyJSON []byte) error
}

// Error is a service error with a stable code, rendered as an RFC 7807
// problem. errors.Is matches on Code, so the Err* sentinels below match any
// Error with the same code.
type Error struct {
	Status int
	Code   string
	Detail string
	Unmet  []string // policy conditions that failed, for policy_denied
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return e.Code
	}
	return e.Code + ": " + e.Detail
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

func sentinel(status int, code string) *Error { return &Error{Status: status, Code: code} }

// Stable error codes (docs/kms.md lists them with their meaning).
var (
	ErrBadRequest        = sentinel(http.StatusBadRequest, "bad_request")
	ErrMalformedJSON     = sentinel(http.StatusBadRequest, "malformed_json")
	ErrUnknownField      = sentinel(http.StatusBadRequest, "unknown_field")
	ErrInvalidField      = sentinel(http.StatusBadRequest, "invalid_field")
	ErrBodyTooLarge      = sentinel(http.StatusRequestEntityTooLarge, "body_too_large")
	ErrUnauthenticated   = sentinel(http.StatusUnauthorized, "unauthenticated")
	ErrBadSignature      = sentinel(http.StatusUnauthorized, "bad_signature")
	ErrStaleTimestamp    = sentinel(http.StatusUnauthorized, "stale_timestamp")
	ErrReplayed          = sentinel(http.StatusUnauthorized, "replayed_request")
	ErrWorkloadAuth      = sentinel(http.StatusUnauthorized, "workload_unverified")
	ErrForbidden         = sentinel(http.StatusForbidden, "forbidden")
	ErrPolicyDenied      = sentinel(http.StatusForbidden, "policy_denied")
	ErrNotFound          = sentinel(http.StatusNotFound, "not_found")
	ErrAppNotFound       = sentinel(http.StatusNotFound, "app_not_found")
	ErrKeyNotFound       = sentinel(http.StatusNotFound, "key_not_found")
	ErrSecretNotFound    = sentinel(http.StatusNotFound, "secret_not_found")
	ErrPolicyNotFound    = sentinel(http.StatusNotFound, "policy_not_found")
	ErrMethodNotAllowed  = sentinel(http.StatusMethodNotAllowed, "method_not_allowed")
	ErrAlreadyExists     = sentinel(http.StatusConflict, "already_exists")
	ErrKeyDisabled       = sentinel(http.StatusConflict, "key_disabled")
	ErrKeyPendingDelete  = sentinel(http.StatusConflict, "key_pending_deletion")
	ErrInvalidState      = sentinel(http.StatusConflict, "invalid_state")
	ErrPolicyInUse       = sentinel(http.StatusConflict, "policy_in_use")
	ErrAlreadyInit       = sentinel(http.StatusConflict, "already_initialized")
	ErrKeyDeleted        = sentinel(http.StatusGone, "key_deleted")
	ErrDecryptFailed     = sentinel(http.StatusUnprocessableEntity, "decrypt_failed")
	ErrBadShares         = sentinel(http.StatusBadRequest, "bad_shares")
	ErrSealed            = sentinel(http.StatusServiceUnavailable, "sealed")
	ErrNotInitialized    = sentinel(http.StatusServiceUnavailable, "not_initialized")
	ErrReplayCacheFull   = sentinel(http.StatusServiceUnavailable, "replay_cache_full")
	ErrRecordIntegrity   = sentinel(http.StatusInternalServerError, "record_integrity")
	ErrAuditDamaged      = sentinel(http.StatusServiceUnavailable, "audit_chain_damaged")
	ErrStoreUnavailable  = sentinel(http.StatusServiceUnavailable, "store_unavailable")
	ErrAppDisabled       = sentinel(http.StatusForbidden, "app_disabled")
	ErrInternal          = sentinel(http.StatusInternalServerError, "internal")
	ErrUnsupportedMedia  = sentinel(http.StatusUnsupportedMediaType, "unsupported_media_type")
	ErrNoPolicyEvaluator = sentinel(http.StatusForbidden, "policy_unavailable")
)

// fail returns a copy of sentinel s with a detail message.
func fail(s *Error, format string, a ...any) *Error {
	return &Error{Status: s.Status, Code: s.Code, Detail: fmt.Sprintf(format, a...)}
}
