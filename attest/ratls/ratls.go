// Package ratls makes and verifies RA-TLS certificates: self-signed X.509
// certificates whose key is bound to TEE evidence, compatible with
// Gramine's format. The evidence sits in the TCG DICE tagged-evidence
// extension (OID 2.23.133.5.4.9): CBOR tag 60000 over [evidence, claims],
// where claims is the CBOR map {"pubkey-hash": [1, SHA-256(SPKI DER)]}
// (optionally with "nonce") and report_data[0:32] = SHA-256(claims). SGX
// certificates with Gramine's legacy extension (OID 1.2.840.113741.1337.6,
// the raw quote, report_data[0:32] = SHA-256(SPKI DER)) are accepted too.
//
// The runtime's own certificates (Options.Instance) add the claim
// "veil-instance" (the instance measurement) and fill report_data[32:64]
// with attest.RuntimeReportData's tag, which evidence a workload asks for
// through /dev/attestation can never carry (docs/formats/report-data.md);
// a Peer with RequireRuntime accepts only those.
//
// What it protects against: a peer that is not the attested workload (the
// TLS key must be the one the evidence binds), evidence taken from another
// certificate, stale evidence when a server-chosen nonce is used (Nonces).
//
// What it does not protect against: without a nonce, a certificate and its
// key stolen from a TEE can be replayed until the policy's max_evidence_age
// (counted from the certificate's NotBefore) runs out; the evidence says
// nothing about the network path.
package ratls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/veil-tee/veil/attest"
)

// OIDTaggedEvidence returns the OID of the certificate extension that
// carries CBOR-tagged evidence (a new value on every call).
func OIDTaggedEvidence() asn1.ObjectIdentifier { return asn1.ObjectIdentifier{2, 23, 133, 5, 4, 9} }

// OIDLegacySGXQuote returns the OID of the legacy extension that carries a
// bare SGX quote (a new value on every call).
func OIDLegacySGXQuote() asn1.ObjectIdentifier {
	return asn1.ObjectIdentifier{1, 2, 840, 113741, 1337, 6}
}

// TagEvidence is the CBOR tag of tagged evidence (Gramine's choice).
const TagEvidence = 60000

const (
	hashAlgSHA256   = 1 // IANA Named Information Hash Algorithm: sha-256
	maxExtensionLen = 64 << 10
	nonceSize       = 32
)

// Errors.
var (
	// ErrNotRATLS: the certificate carries no evidence extension.
	ErrNotRATLS = errors.New("not an RA-TLS certificate")
	// ErrExtension: the evidence extension does not parse.
	ErrExtension = errors.New("malformed RA-TLS evidence extension")
)

// Options for making a certificate.
type Options struct {
	// Nonce, when set, is a server-chosen nonce (32 bytes) bound into the
	// claims; the server accepts it once (see Nonces).
	Nonce []byte
	// Validity of the certificate; default 24 hours from now.
	Validity time.Duration
	// Now is the issuing time; default time.Now.
	Now func() time.Time
	// Instance, when set, makes a runtime certificate: the claims name this
	// instance measurement and the report data is
	// attest.RuntimeReportData(instance, SHA-256(claims)).
	Instance *[attest.InstanceSize]byte
}

type taggedEvidence struct {
	_        struct{} `cbor:",toarray"`
	Evidence []byte
	Claims   []byte
}

var (
	encMode, _ = cbor.CoreDetEncOptions().EncMode()
	decMode, _ = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   8,
		MaxArrayElements:  16,
		MaxMapPairs:       16,
		IndefLength:       cbor.IndefLengthForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
)

// NewCertificate makes a fresh ECDSA P-256 key and a self-signed
// certificate carrying evidence from issuer that binds the key.
func NewCertificate(ctx context.Context, issuer attest.Issuer, o Options) (*tls.Certificate, error) {
	if o.Nonce != nil && len(o.Nonce) != nonceSize {
		return nil, fmt.Errorf("making RA-TLS certificate: nonce has %d bytes, want %d", len(o.Nonce), nonceSize)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	ext, err := taggedEvidenceFor(ctx, issuer, spki, o.Nonce, o.Instance)
	if err != nil {
		return nil, fmt.Errorf("making RA-TLS certificate: %w", err)
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	validity := o.Validity
	if validity <= 0 {
		validity = 24 * time.Hour
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	t := now().UTC().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:    serial.Add(serial, big.NewInt(1)),
		Subject:         pkix.Name{CommonName: "veil RA-TLS", Organization: []string{"veil"}},
		NotBefore:       t,
		NotAfter:        t.Add(validity),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:        []string{"localhost"},
		ExtraExtensions: []pkix.Extension{{Id: OIDTaggedEvidence(), Value: ext}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("making RA-TLS certificate: %w", err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// claimInstance is the claim naming the runtime's instance measurement.
const claimInstance = "veil-instance"

func encodeClaims(spki, nonce []byte, instance *[attest.InstanceSize]byte) ([]byte, error) {
	h := sha256.Sum256(spki)
	m := map[string]any{"pubkey-hash": []any{hashAlgSHA256, h[:]}}
	if nonce != nil {
		m["nonce"] = nonce
	}
	if instance != nil {
		m[claimInstance] = instance[:]
	}
	return encMode.Marshal(m)
}

// Extension is the parsed evidence extension of a certificate.
type Extension struct {
	Legacy     bool   // Gramine's legacy SGX extension: raw quote, no claims
	Evidence   []byte // the raw quote or report
	Claims     []byte // CBOR claims (nil for legacy)
	PubKeyHash []byte // from the claims
	Nonce      []byte // from the claims, if any
	Instance   []byte // the "veil-instance" claim of a runtime certificate, if any
}

// ParseExtension finds and parses the evidence extension of cert strictly.
func ParseExtension(cert *x509.Certificate) (*Extension, error) {
	var tagged, legacy []byte
	for _, e := range cert.Extensions {
		switch {
		case e.Id.Equal(OIDTaggedEvidence()):
			if tagged != nil {
				return nil, fmt.Errorf("two tagged-evidence extensions: %w", ErrExtension)
			}
			tagged = e.Value
		case e.Id.Equal(OIDLegacySGXQuote()):
			legacy = e.Value
		}
	}
	switch {
	case tagged != nil:
		return ParseTaggedEvidence(tagged)
	case legacy != nil:
		if len(legacy) > maxExtensionLen {
			return nil, fmt.Errorf("legacy quote extension of %d bytes: %w", len(legacy), ErrExtension)
		}
		return &Extension{Legacy: true, Evidence: legacy}, nil
	}
	return nil, ErrNotRATLS
}

// ParseTaggedEvidence parses the value of the tagged-evidence extension.
func ParseTaggedEvidence(b []byte) (*Extension, error) {
	if len(b) > maxExtensionLen {
		return nil, fmt.Errorf("%d bytes, more than %d: %w", len(b), maxExtensionLen, ErrExtension)
	}
	var tag cbor.RawTag
	if err := decMode.Unmarshal(b, &tag); err != nil {
		return nil, fmt.Errorf("decoding CBOR: %v: %w", err, ErrExtension)
	}
	if tag.Number != TagEvidence {
		return nil, fmt.Errorf("CBOR tag %d, want %d: %w", tag.Number, TagEvidence, ErrExtension)
	}
	var te taggedEvidence
	if err := decMode.Unmarshal(tag.Content, &te); err != nil {
		return nil, fmt.Errorf("decoding [evidence, claims]: %v: %w", err, ErrExtension)
	}
	if len(te.Evidence) == 0 || len(te.Claims) == 0 {
		return nil, fmt.Errorf("empty evidence or claims: %w", ErrExtension)
	}
	var claims map[string]cbor.RawMessage
	if err := decMode.Unmarshal(te.Claims, &claims); err != nil {
		return nil, fmt.Errorf("decoding claims: %v: %w", err, ErrExtension)
	}
	x := &Extension{Evidence: te.Evidence, Claims: te.Claims}
	for k, v := range claims {
		switch k {
		case "pubkey-hash":
			var ph []cbor.RawMessage
			if err := decMode.Unmarshal(v, &ph); err != nil || len(ph) != 2 {
				return nil, fmt.Errorf("claim pubkey-hash: want [alg, hash]: %w", ErrExtension)
			}
			var alg int
			if err := decMode.Unmarshal(ph[0], &alg); err != nil || alg != hashAlgSHA256 {
				return nil, fmt.Errorf("claim pubkey-hash: hash algorithm must be 1 (sha-256): %w", ErrExtension)
			}
			if err := decMode.Unmarshal(ph[1], &x.PubKeyHash); err != nil || len(x.PubKeyHash) != sha256.Size {
				return nil, fmt.Errorf("claim pubkey-hash: want a 32-byte hash: %w", ErrExtension)
			}
		case "nonce":
			if err := decMode.Unmarshal(v, &x.Nonce); err != nil || len(x.Nonce) != nonceSize {
				return nil, fmt.Errorf("claim nonce: want %d bytes: %w", nonceSize, ErrExtension)
			}
		case claimInstance:
			if err := decMode.Unmarshal(v, &x.Instance); err != nil || len(x.Instance) != attest.InstanceSize {
				return nil, fmt.Errorf("claim %s: want %d bytes: %w", claimInstance, attest.InstanceSize, ErrExtension)
			}
		default:
			return nil, fmt.Errorf("unknown claim %q: %w", k, ErrExtension)
		}
	}
	if x.PubKeyHash == nil {
		return nil, fmt.Errorf("claim pubkey-hash missing: %w", ErrExtension)
	}
	return x, nil
}

// Peer says how to verify the other side's RA-TLS certificate.
type Peer struct {
	Verifier attest.Verifier
	Policy   *attest.Policy
	// Nonces, when set, requires the certificate to carry a nonce this store
	// issued and has not seen used.
	Nonces *Nonces
	// Now is the verification time; default time.Now.
	Now func() time.Time
	// OnVerified, when set, receives the verified claims.
	OnVerified func(*attest.Claims)
	// DeferPolicy skips the policy decision: the certificate and its
	// evidence are verified and bound, and the caller decides on the
	// returned claims later (the key service applies each key's own
	// policy). Policy must then be nil.
	DeferPolicy bool
	// RequireRuntime accepts only the runtime's own certificates: a
	// "veil-instance" claim and report data made by
	// attest.RuntimeReportData for it (the key service's rule for
	// workloads). Evidence a workload asked for through /dev/attestation
	// is refused with attest.ErrBinding.
	RequireRuntime bool
}

// VerifyCertificate checks that cert is a valid self-signed RA-TLS
// certificate whose key is bound to evidence that verifies and satisfies
// the policy, and returns the claims.
func (p *Peer) VerifyCertificate(ctx context.Context, cert *x509.Certificate) (*attest.Claims, error) {
	now := time.Now()
	if p.Now != nil {
		now = p.Now()
	}
	if len(cert.UnhandledCriticalExtensions) > 0 {
		return nil, fmt.Errorf("verifying RA-TLS certificate: unknown critical extension %v: %w", cert.UnhandledCriticalExtensions[0], ErrExtension)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		return nil, fmt.Errorf("verifying RA-TLS certificate: not validly self-signed: %v: %w", err, attest.ErrSignature)
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("verifying RA-TLS certificate: valid %s to %s, not at %s: %w", cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339), now.UTC().Format(time.RFC3339), attest.ErrChain)
	}
	x, err := ParseExtension(cert)
	if err != nil {
		return nil, fmt.Errorf("verifying RA-TLS certificate: %w", err)
	}
	claims, err := p.verifyBinding(ctx, x, cert.RawSubjectPublicKeyInfo, "RA-TLS certificate")
	if err != nil {
		return nil, err
	}
	if p.Nonces != nil {
		if x.Nonce == nil {
			return nil, fmt.Errorf("verifying RA-TLS certificate: no nonce, but this peer requires one: %w", ErrStale)
		}
		if err := p.Nonces.Consume(x.Nonce, now); err != nil {
			return nil, fmt.Errorf("verifying RA-TLS certificate: %w", err)
		}
	}
	if claims.IssuedAt.IsZero() {
		claims.IssuedAt = cert.NotBefore
	}
	return p.decide(claims, now)
}

// verifyBinding verifies x's evidence and that it binds the key spki.
func (p *Peer) verifyBinding(ctx context.Context, x *Extension, spki []byte, what string) (*attest.Claims, error) {
	tee, err := attest.Detect(x.Evidence)
	if err != nil {
		return nil, fmt.Errorf("verifying %s: %w", what, err)
	}
	if x.Legacy && tee != attest.TEESGX {
		return nil, fmt.Errorf("verifying %s: legacy extension with %s evidence: %w", what, tee, ErrExtension)
	}
	claims, err := p.Verifier.Verify(ctx, &attest.Evidence{TEE: tee, Quote: x.Evidence})
	if err != nil {
		return nil, fmt.Errorf("verifying %s evidence: %w", what, err)
	}
	spkiHash := sha256.Sum256(spki)
	var want []byte
	if x.Legacy {
		want = spkiHash[:]
	} else {
		if !bytes.Equal(x.PubKeyHash, spkiHash[:]) {
			return nil, fmt.Errorf("verifying %s: pubkey-hash claim is not the peer's key: %w", what, attest.ErrBinding)
		}
		h := sha256.Sum256(x.Claims)
		want = h[:]
	}
	if len(claims.ReportData) < 32 || !bytes.Equal(claims.ReportData[:32], want) {
		return nil, fmt.Errorf("verifying %s: evidence report data does not bind the peer's key: %w", what, attest.ErrBinding)
	}
	switch {
	case x.Instance != nil:
		if err := attest.CheckRuntimeReportData(claims.ReportData, x.Instance); err != nil {
			return nil, fmt.Errorf("verifying %s: %w", what, err)
		}
		// Sim evidence measures the instance itself: the claim must agree.
		if claims.TEE == attest.TEESim && !bytes.Equal(claims.Measurement, x.Instance) {
			return nil, fmt.Errorf("verifying %s: instance claim %x is not the evidence's measurement %s: %w", what, x.Instance, claims.Measurement, attest.ErrBinding)
		}
		claims.Instance = bytes.Clone(x.Instance)
	case p.RequireRuntime:
		return nil, fmt.Errorf("verifying %s: not the runtime's evidence (no %s claim; evidence a workload asked for is never accepted here): %w", what, claimInstance, attest.ErrBinding)
	}
	return claims, nil
}

// decide applies the policy (unless deferred) to verified claims.
func (p *Peer) decide(claims *attest.Claims, now time.Time) (*attest.Claims, error) {
	if p.DeferPolicy {
		if p.Policy != nil {
			return nil, errors.New("RA-TLS: a peer with DeferPolicy must not have a Policy")
		}
	} else {
		pol := p.Policy
		if pol == nil {
			pol = &attest.Policy{}
		}
		if err := pol.Enforce(claims, attest.Context{Now: now}); err != nil {
			return claims, err
		}
	}
	if p.OnVerified != nil {
		p.OnVerified(claims)
	}
	return claims, nil
}

// BindKey issues evidence binding the public key spki (DER
// SubjectPublicKeyInfo) and a verifier's nonce, in the tagged-evidence form
// of the certificate extension. A server whose TLS certificate is not an
// RA-TLS certificate (one issued by a CA, or pinned) answers a client's
// challenge with it: the client checks it against the key of the
// connection (VerifyKeyBinding).
func BindKey(ctx context.Context, issuer attest.Issuer, spki, nonce []byte) ([]byte, error) {
	if len(nonce) != nonceSize {
		return nil, fmt.Errorf("binding a key: nonce has %d bytes, want %d", len(nonce), nonceSize)
	}
	return taggedEvidenceFor(ctx, issuer, spki, nonce, nil)
}

// taggedEvidenceFor issues evidence whose report data is the hash of the
// claims {pubkey-hash of spki, nonce}, and encodes [evidence, claims] as
// tagged evidence: the certificate extension, or BindKey's answer.
func taggedEvidenceFor(ctx context.Context, issuer attest.Issuer, spki, nonce []byte, instance *[attest.InstanceSize]byte) ([]byte, error) {
	claims, err := encodeClaims(spki, nonce, instance)
	if err != nil {
		return nil, err
	}
	var rd attest.ReportData
	h := sha256.Sum256(claims)
	copy(rd[:32], h[:])
	if instance != nil {
		rd = attest.RuntimeReportData(*instance, h)
	}
	ev, err := issuer.Issue(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("issuing evidence: %w", err)
	}
	return encMode.Marshal(cbor.Tag{Number: TagEvidence, Content: taggedEvidence{Evidence: ev.Quote, Claims: claims}})
}

// VerifyKeyBinding checks tagged evidence from BindKey: it verifies, binds
// spki (the key the caller saw on its TLS connection) and exactly nonce
// (the caller's fresh challenge), and satisfies the policy.
func (p *Peer) VerifyKeyBinding(ctx context.Context, tagged, spki, nonce []byte) (*attest.Claims, error) {
	now := time.Now()
	if p.Now != nil {
		now = p.Now()
	}
	x, err := ParseTaggedEvidence(tagged)
	if err != nil {
		return nil, fmt.Errorf("verifying the key binding: %w", err)
	}
	if len(nonce) != nonceSize || !bytes.Equal(x.Nonce, nonce) {
		return nil, fmt.Errorf("verifying the key binding: it answers another challenge (nonce): %w", ErrStale)
	}
	claims, err := p.verifyBinding(ctx, x, spki, "the key binding")
	if err != nil {
		return nil, err
	}
	if claims.IssuedAt.IsZero() {
		claims.IssuedAt = now
	}
	return p.decide(claims, now)
}

// verifyPeer is a tls.Config.VerifyPeerCertificate for an RA-TLS peer.
func (p *Peer) verifyPeer(raw [][]byte, _ [][]*x509.Certificate) error {
	if p == nil || p.Verifier == nil {
		return errors.New("RA-TLS: no verifier configured for the peer's certificate")
	}
	if len(raw) != 1 {
		return fmt.Errorf("RA-TLS peer sent %d certificates, want exactly one self-signed certificate: %w", len(raw), ErrNotRATLS)
	}
	cert, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("parsing RA-TLS peer certificate: %w", err)
	}
	_, err = p.VerifyCertificate(context.Background(), cert)
	return err
}

// ServerConfig returns a TLS server configuration presenting cert (an
// RA-TLS certificate or an ordinary one). If peer is set, clients must
// present an RA-TLS certificate that peer accepts (workload -> KMS).
func ServerConfig(cert *tls.Certificate, peer *Peer) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	if peer != nil {
		// The client's self-signed leaf has no chain to verify: it is
		// verified by its evidence in VerifyPeerCertificate instead.
		c.ClientAuth = tls.RequireAnyClientCert
		c.VerifyPeerCertificate = peer.verifyPeer
	}
	return c
}

// ClientConfig returns a TLS client configuration that verifies the
// server's RA-TLS certificate with peer (for a server that runs in a TEE)
// and, if cert is set, presents it (bidirectional attestation). With a nil
// peer every handshake fails.
func ClientConfig(cert *tls.Certificate, peer *Peer) *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// InsecureSkipVerify only turns off web-PKI chain and host name
		// checks, which cannot apply to a self-signed RA-TLS leaf; the leaf
		// is verified by its evidence, its key binding and the policy in
		// VerifyPeerCertificate, and the handshake fails if that fails.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: peer.verifyPeer,
	}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// EncodePEM writes a certificate as PEM.
func EncodePEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// ParsePEM reads a certificate from PEM ("CERTIFICATE" or "TRUSTED
// CERTIFICATE", as OpenSSL writes it) or DER.
func ParsePEM(b []byte) (*x509.Certificate, error) {
	blk, rest := pem.Decode(b)
	if blk == nil {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate: neither PEM nor DER: %w", err)
		}
		return c, nil
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("parsing certificate: data after the first PEM block")
	}
	switch blk.Type {
	case "CERTIFICATE":
		return x509.ParseCertificate(blk.Bytes)
	case "TRUSTED CERTIFICATE":
		// OpenSSL appends trust settings after the certificate DER.
		var raw asn1.RawValue
		if _, err := asn1.Unmarshal(blk.Bytes, &raw); err != nil {
			return nil, fmt.Errorf("parsing trusted certificate: %w", err)
		}
		return x509.ParseCertificate(raw.FullBytes)
	}
	return nil, fmt.Errorf("parsing certificate: PEM block %q is not a certificate", blk.Type)
}
