// Package api holds the wire format of the veil key service, shared by the
// server (kms) and the client (kms/client): request and response bodies,
// the problem document, and the canonical string that app requests sign.
// Nothing else builds or parses these bytes.
package api

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Headers of a signed app request.
const (
	HeaderAppID     = "X-Veil-App-Id"
	HeaderTimestamp = "X-Veil-Timestamp"
	HeaderNonce     = "X-Veil-Nonce"
	HeaderSignature = "X-Veil-Signature"
	// HeaderRequestID makes POST /v1/keys idempotent: a repeated request
	// with the same id from the same app returns the key the first
	// created (on any server of the same store).
	HeaderRequestID = "X-Veil-Request-Id"
)

// ProblemContentType is the media type of error bodies (RFC 7807).
const ProblemContentType = "application/problem+json"

// ProblemTypeBase prefixes the stable code in Problem.Type.
const ProblemTypeBase = "https://veil-tee.github.io/problems/"

// Problem is an RFC 7807 problem document with veil's stable code.
type Problem struct {
	Type   string   `json:"type"`
	Title  string   `json:"title"`
	Status int      `json:"status"`
	Detail string   `json:"detail,omitempty"`
	Code   string   `json:"code"`
	Unmet  []string `json:"unmet,omitempty"`
}

// SigningKey derives the HMAC key of an app from its API key. The server
// stores only this value (encrypted under its root key), never the API key.
func SigningKey(apiKey string) []byte {
	h := sha256.Sum256([]byte("veil-kms-app-signing-key-v1\n" + apiKey))
	return h[:]
}

// StringToSign is the canonical form of a request that an app signs.
// requestURI is the path and query exactly as sent on the request line.
func StringToSign(method, requestURI string, ts int64, nonce string, body []byte) []byte {
	bh := sha256.Sum256(body)
	const label = "VEIL-HMAC-SHA256\n"
	b := make([]byte, 0, len(label)+len(method)+len(requestURI)+len(nonce)+20+4+2*len(bh))
	b = append(b, label...)
	b = append(append(b, method...), '\n')
	b = append(append(b, requestURI...), '\n')
	b = append(strconv.AppendInt(b, ts, 10), '\n')
	b = append(append(b, nonce...), '\n')
	return hex.AppendEncode(b, bh[:])
}

// Sign returns the hex HMAC-SHA256 signature of a request.
func Sign(signingKey []byte, method, requestURI string, ts int64, nonce string, body []byte) string {
	m := hmac.New(sha256.New, signingKey)
	m.Write(StringToSign(method, requestURI, ts, nonce, body))
	return hex.EncodeToString(m.Sum(nil))
}

// ErrUnknownField is wrapped by DecodeStrict for a field the type lacks.
var ErrUnknownField = errors.New("unknown field")

// ErrMalformed is wrapped by DecodeStrict for any other decoding error.
var ErrMalformed = errors.New("malformed JSON")

// UnknownFieldError names the offending field.
type UnknownFieldError struct{ Field string }

func (e *UnknownFieldError) Error() string { return fmt.Sprintf("unknown field %q", e.Field) }
func (e *UnknownFieldError) Unwrap() error { return ErrUnknownField }

// DecodeStrict decodes exactly one JSON value from b into v, rejecting
// unknown fields (naming them) and trailing data. A *DecryptRequest in the
// compact form encoding/json writes is read without reflection
// (decodeCompact); anything else takes encoding/json.
func DecodeStrict(b []byte, v any) error {
	if d, ok := v.(*DecryptRequest); ok && d.decodeCompact(b) {
		return nil
	}
	return decodeStrictJSON(b, v)
}

func decodeStrictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		const pfx = "json: unknown field \""
		if s := err.Error(); len(s) > len(pfx) && s[:len(pfx)] == pfx {
			return &UnknownFieldError{Field: s[len(pfx) : len(s)-1]}
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%w: field %q must be %s, not %s", ErrMalformed, te.Field, te.Type, te.Value)
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: empty body", ErrMalformed)
		}
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: data after the JSON value", ErrMalformed)
	}
	return nil
}

// Key specs.
const (
	SpecAES256GCM = "AES_256_GCM"
)

// Key states.
const (
	StateEnabled         = "enabled"
	StateDisabled        = "disabled"
	StatePendingDeletion = "pending_deletion"
	StateDeleted         = "deleted"
)

// Status is GET /v1/sys/status.
type Status struct {
	Initialized bool   `json:"initialized"`
	Sealed      bool   `json:"sealed"`
	Mode        string `json:"mode,omitempty"`
	Threshold   int    `json:"threshold,omitempty"`
	Shares      int    `json:"shares,omitempty"`
	Progress    int    `json:"progress"`
}

// Attestation is GET /v1/sys/attestation?nonce=HEX: evidence that the
// service's TLS key lives in a TEE, answering the client's 32-byte nonce
// (ratls.BindKey: the tagged-evidence CBOR of RA-TLS, base64 in JSON).
type Attestation struct {
	TEE      string `json:"tee"`
	Evidence []byte `json:"evidence"`
}

// UnsealRequest is POST /v1/sys/unseal.
type UnsealRequest struct {
	Share string `json:"share"`
}

// EnrollRequest is POST /v1/apps.
type EnrollRequest struct {
	Name string `json:"name"`
}

// EnrollResponse carries the API key, shown once.
type EnrollResponse struct {
	AppID  string `json:"app_id"`
	APIKey string `json:"api_key"`
}

// App describes an enrolled app.
type App struct {
	AppID    string    `json:"app_id"`
	Name     string    `json:"name"`
	Created  time.Time `json:"created"`
	Disabled bool      `json:"disabled,omitempty"`
	// SelfKeyed: the app rotated its own API key, which the admin never saw.
	SelfKeyed bool `json:"self_keyed,omitempty"`
}

// AppList is GET /v1/apps.
type AppList struct {
	Apps []App `json:"apps"`
}

// CreateKeyRequest is POST /v1/keys.
type CreateKeyRequest struct {
	Name        string `json:"name"`
	Spec        string `json:"spec,omitempty"`
	Description string `json:"description,omitempty"`
}

// KeyVersion is one version of a key.
type KeyVersion struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
}

// Key describes a customer master key (never its material).
type Key struct {
	ID             string       `json:"id"`
	Name           string       `json:"name"`
	Owner          string       `json:"owner"`
	Description    string       `json:"description,omitempty"`
	Spec           string       `json:"spec"`
	State          string       `json:"state"`
	Created        time.Time    `json:"created"`
	DeletionTime   *time.Time   `json:"deletion_time,omitempty"`
	PrimaryVersion int          `json:"primary_version"`
	Versions       []KeyVersion `json:"versions"`
	Policies       []string     `json:"policies"`
}

// KeyList is GET /v1/keys.
type KeyList struct {
	Keys []Key `json:"keys"`
}

// ScheduleDeletionRequest is POST /v1/keys/{ref}/schedule-deletion.
type ScheduleDeletionRequest struct {
	PendingDays int `json:"pending_days"`
}

// AttachPolicyRequest attaches a policy to a key or secret.
type AttachPolicyRequest struct {
	Policy string `json:"policy"`
}

// EncryptRequest is POST /v1/keys/{ref}/encrypt.
type EncryptRequest struct {
	Plaintext []byte `json:"plaintext"`
	AAD       []byte `json:"aad,omitempty"`
}

// DataKeyRequest is POST /v1/keys/{ref}/generate-data-key[-without-plaintext].
type DataKeyRequest struct {
	Length int    `json:"length,omitempty"` // bytes, default 32
	AAD    []byte `json:"aad,omitempty"`
}

// CipherResponse answers encrypt and the data-key calls.
type CipherResponse struct {
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
	Ciphertext []byte `json:"ciphertext"`
	Plaintext  []byte `json:"plaintext,omitempty"`
}

// DecryptRequest is POST /v1/decrypt.
type DecryptRequest struct {
	Ciphertext []byte `json:"ciphertext"`
	AAD        []byte `json:"aad,omitempty"`
}

// decodeCompact fills an empty r from exactly `{"ciphertext":"B64"}` or
// `{"ciphertext":"B64","aad":"B64"}` (standard base64 with padding, as
// encoding/json writes []byte), optionally followed by one newline, and
// reports whether it did. On any other input it leaves r alone and the
// caller decodes with encoding/json, which gives the same value for these
// inputs (FuzzDecryptRequestCompact) and its own errors for the rest.
func (r *DecryptRequest) decodeCompact(b []byte) bool {
	if r.Ciphertext != nil || r.AAD != nil {
		return false
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	field := func(b []byte, name string) (val, rest []byte, ok bool) {
		b, ok = bytes.CutPrefix(b, []byte(`"`+name+`":"`))
		if !ok {
			return nil, nil, false
		}
		end := bytes.IndexByte(b, '"')
		if end <= 0 {
			return nil, nil, false
		}
		enc := b[:end]
		for _, c := range enc {
			if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
				return nil, nil, false
			}
		}
		val = make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
		n, err := base64.StdEncoding.Decode(val, enc)
		if err != nil {
			return nil, nil, false
		}
		return val[:n], b[end+1:], true
	}
	b, ok := bytes.CutPrefix(b, []byte("{"))
	if !ok {
		return false
	}
	ct, b, ok := field(b, "ciphertext")
	if !ok {
		return false
	}
	var aad []byte
	if rest, found := bytes.CutPrefix(b, []byte(",")); found {
		if aad, b, ok = field(rest, "aad"); !ok {
			return false
		}
	}
	if string(b) != "}" {
		return false
	}
	r.Ciphertext, r.AAD = ct, aad
	return true
}

// MarshalJSONResponse encodes a response body as encoding/json does (the
// server adds a newline). A DecryptResponse, the answer of every data-key
// unwrap, is written without reflection when its key id needs no escaping.
func MarshalJSONResponse(v any) ([]byte, error) {
	if r, ok := v.(DecryptResponse); ok && r.Plaintext != nil && plainJSONString(r.KeyID) {
		b := make([]byte, 0, 64+len(r.KeyID)+base64.StdEncoding.EncodedLen(len(r.Plaintext)))
		b = append(b, `{"key_id":"`...)
		b = append(b, r.KeyID...)
		b = append(b, `","key_version":`...)
		b = strconv.AppendInt(b, int64(r.KeyVersion), 10)
		b = append(b, `,"plaintext":"`...)
		b = base64.StdEncoding.AppendEncode(b, r.Plaintext)
		return append(b, `"}`...), nil
	}
	return json.Marshal(v)
}

// plainJSONString reports whether encoding/json writes s verbatim between
// its quotes: printable ASCII other than '"', '\\', '<', '>' and '&'.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// DecryptResponse answers decrypt.
type DecryptResponse struct {
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
	Plaintext  []byte `json:"plaintext"`
}

// PutSecretRequest is PUT /v1/secrets/{name}.
type PutSecretRequest struct {
	Value       []byte `json:"value"`
	Description string `json:"description,omitempty"`
}

// Secret describes a secret; Value is set only by get.
type Secret struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Owner       string    `json:"owner"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	Version     int       `json:"version"`
	Versions    int       `json:"versions"`
	Policies    []string  `json:"policies"`
	Value       []byte    `json:"value,omitempty"`
}

// SecretList is GET /v1/secrets.
type SecretList struct {
	Secrets []Secret `json:"secrets"`
}

// CreatePolicyRequest is POST /v1/policies.
type CreatePolicyRequest struct {
	Name     string          `json:"name"`
	Document json.RawMessage `json:"document"`
}

// ReplacePolicyRequest is PUT /v1/policies/{ref}: a new document for an
// existing policy (owner only).
type ReplacePolicyRequest struct {
	Document json.RawMessage `json:"document"`
}

// Policy is a stored release policy.
type Policy struct {
	ID       string          `json:"id"`
	Name     string          `json:"name"`
	Owner    string          `json:"owner"`
	Created  time.Time       `json:"created"`
	Document json.RawMessage `json:"document"`
	// ByAdmin is true when the admin wrote the document on the app's
	// behalf; the app reviews it before attaching it.
	ByAdmin bool `json:"by_admin,omitempty"`
}

// PolicyList is GET /v1/policies.
type PolicyList struct {
	Policies []Policy `json:"policies"`
}

// AuditHead is GET /v1/audit/head.
type AuditHead struct {
	Seq       uint64 `json:"seq"`
	Hash      string `json:"hash"`
	Authentic bool   `json:"authentic"`
	// Damaged says what is wrong with the chain's anchors (a missing or
	// forged genesis or head, entries beyond the head); empty when intact.
	Damaged string `json:"damaged,omitempty"`
	// CheckpointKey is the hex Ed25519 public key that signs this
	// service's audit checkpoints.
	CheckpointKey string `json:"checkpoint_key"`
}

// AuditPage is GET /v1/audit; entries are audit.Entry values kept raw so
// that a verifier hashes exactly what was stored.
type AuditPage struct {
	Entries []json.RawMessage `json:"entries"`
	Next    uint64            `json:"next,omitempty"` // pass as ?after= for the next page
}

// Asymmetric key specs.
const (
	SpecECP256  = "EC_P256"  // ECDSA with SHA-256 (ASN.1 signatures)
	SpecRSA3072 = "RSA_3072" // RSASSA-PSS with SHA-256; RSA-OAEP with SHA-256
)

// SignRequest is POST /v1/keys/{ref}/sign: exactly one of Message (hashed
// with SHA-256 by the service) and Digest (a SHA-256 digest).
type SignRequest struct {
	Message []byte `json:"message,omitempty"`
	Digest  []byte `json:"digest,omitempty"`
}

// SignResponse answers sign.
type SignResponse struct {
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
	Signature  []byte `json:"signature"`
}

// VerifyRequest is POST /v1/keys/{ref}/verify; KeyVersion 0 means primary.
type VerifyRequest struct {
	Message    []byte `json:"message,omitempty"`
	Digest     []byte `json:"digest,omitempty"`
	Signature  []byte `json:"signature"`
	KeyVersion int    `json:"key_version,omitempty"`
}

// VerifyResponse answers verify.
type VerifyResponse struct {
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
	Valid      bool   `json:"valid"`
}

// PublicKeyResponse is GET /v1/keys/{ref}/public-key.
type PublicKeyResponse struct {
	KeyID      string `json:"key_id"`
	KeyVersion int    `json:"key_version"`
	Spec       string `json:"spec"`
	PublicKey  string `json:"public_key"` // PEM, PKIX
}

// AsymmetricDecryptRequest is POST /v1/keys/{ref}/asymmetric-decrypt
// (RSA-OAEP with SHA-256); KeyVersion 0 means primary.
type AsymmetricDecryptRequest struct {
	Ciphertext []byte `json:"ciphertext"`
	KeyVersion int    `json:"key_version,omitempty"`
}
