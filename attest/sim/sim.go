// Package sim is a software attestation platform for development and tests.
// `veil sim init` creates, in the user's data directory, a self-made root CA
// and a platform attestation key certified by it; sim quotes mirror an SGX
// report (measurement, signer, product id, svn, attributes, report data) and
// are signed with the platform key.
//
// What it protects against: nothing a real TEE would. It lets the rest of
// veil (key release, RA-TLS, init-RA) run the same code paths without
// hardware. Its claims always say tee=sim and debug=true, and no Policy
// accepts them unless it sets allow_sim.
//
// What it does not protect against: anyone who can read the platform key
// (the host) can forge any sim quote; the workload's memory is not isolated.
package sim

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/internal/fsutil"
	"github.com/veil-tee/veil/internal/userdir"
)

// File names inside a platform directory.
const (
	CAFile          = "ca.pem"
	CAKeyFile       = "ca.key"
	PlatformFile    = "platform.pem"
	PlatformKeyFile = "platform.key"
)

// DefaultDir is the sim platform directory in the user's data dir.
func DefaultDir() (string, error) {
	d, err := userdir.Dir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "sim"), nil
}

// Platform is a loaded sim platform: root CA and certified platform key.
type Platform struct {
	Dir  string
	CA   *x509.Certificate
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Init creates the platform in dir unless it already exists, and loads it.
// created reports whether new keys were made. It never overwrites files.
func Init(dir string) (p *Platform, created bool, err error) {
	if _, err := os.Stat(filepath.Join(dir, PlatformKeyFile)); err == nil {
		p, err := Load(dir)
		return p, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("creating sim platform directory: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, err
	}
	platKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, err
	}
	now := time.Now().Add(-time.Hour).UTC()
	caTmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "veil sim root CA (development only, not secure)", Organization: []string{"veil sim"}},
		NotBefore:             now,
		NotAfter:              now.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, false, fmt.Errorf("creating sim root CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	platTmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "veil sim platform attestation key", Organization: []string{"veil sim"}},
		NotBefore:    now,
		NotAfter:     now.AddDate(20, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	platDER, err := x509.CreateCertificate(rand.Reader, platTmpl, ca, &platKey.PublicKey, caKey)
	if err != nil {
		return nil, false, fmt.Errorf("creating sim platform certificate: %w", err)
	}
	caKeyDER, _ := x509.MarshalPKCS8PrivateKey(caKey)
	platKeyDER, _ := x509.MarshalPKCS8PrivateKey(platKey)
	// Keys first, the platform key last: its presence marks a complete platform.
	files := []struct {
		name string
		typ  string
		der  []byte
		mode fs.FileMode
	}{
		{CAKeyFile, "PRIVATE KEY", caKeyDER, 0o600},
		{CAFile, "CERTIFICATE", caDER, 0o644},
		{PlatformFile, "CERTIFICATE", platDER, 0o644},
		{PlatformKeyFile, "PRIVATE KEY", platKeyDER, 0o600},
	}
	for _, f := range files {
		data := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		// Leftovers of an interrupted init are replaced; a complete platform
		// (with its key) was returned above and is never touched.
		if err := fsutil.WriteFile(filepath.Join(dir, f.name), data, f.mode, true); err != nil {
			return nil, false, fmt.Errorf("writing sim platform: %w", err)
		}
	}
	p, err = Load(dir)
	return p, true, err
}

func randSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

// ErrNoPlatform: the sim platform has not been created.
var ErrNoPlatform = errors.New("sim platform not initialised")

// Load reads the platform in dir.
func Load(dir string) (*Platform, error) {
	ca, err := LoadCA(dir)
	if err != nil {
		return nil, err
	}
	cert, err := readCert(filepath.Join(dir, PlatformFile))
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, PlatformKeyFile))
	if err != nil {
		return nil, fmt.Errorf("reading sim platform key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("reading %s: not a PEM private key", filepath.Join(dir, PlatformKeyFile))
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing sim platform key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || !ek.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("sim platform key does not match %s", PlatformFile)
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("sim platform certificate not issued by the sim CA: %w", err)
	}
	return &Platform{Dir: dir, CA: ca, Cert: cert, key: ek}, nil
}

// LoadCA reads only the root CA certificate of the platform in dir, which is
// all a verifier needs.
func LoadCA(dir string) (*x509.Certificate, error) {
	return readCert(filepath.Join(dir, CAFile))
}

// LoadCAFile reads a sim platform CA certificate (PEM) from path.
func LoadCAFile(path string) (*x509.Certificate, error) { return readCert(path) }

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading %s: %w", path, ErrNoPlatform)
	}
	if err != nil {
		return nil, fmt.Errorf("reading sim platform: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("reading %s: not a PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// Identity is the workload identity a sim quote reports.
type Identity struct {
	Measurement [32]byte
	Signer      [32]byte
	ProductID   uint16
	SVN         uint16
}

// Issuer issues sim quotes for one workload identity.
type Issuer struct {
	p   *Platform
	id  Identity
	Now func() time.Time
}

// NewIssuer loads the platform in dir and returns an issuer for id.
func NewIssuer(dir string, id Identity) (*Issuer, error) {
	p, err := Load(dir)
	if err != nil {
		return nil, err
	}
	return p.Issuer(id), nil
}

// Issuer returns an issuer for id on this platform.
func (p *Platform) Issuer(id Identity) *Issuer { return &Issuer{p: p, id: id, Now: time.Now} }

// TEE returns attest.TEESim.
func (*Issuer) TEE() attest.TEE { return attest.TEESim }

// Issue produces a signed sim quote binding rd.
func (i *Issuer) Issue(_ context.Context, rd attest.ReportData) (*attest.Evidence, error) {
	q := Quote{
		Body: Body{
			Measurement: i.id.Measurement,
			Signer:      i.id.Signer,
			ProductID:   i.id.ProductID,
			SVN:         i.id.SVN,
			Attributes:  AttrInit | AttrMode64 | AttrDebug,
			XFRM:        defaultXFRM,
			ReportData:  rd,
			IssuedAt:    i.Now().Unix(),
		},
		CertDER: i.p.Cert.Raw,
	}
	digest := sha256.Sum256(signedBytes(&q.Body, q.CertDER))
	sig, err := i.p.key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing sim quote: %w", err)
	}
	q.Signature = sig
	return &attest.Evidence{TEE: attest.TEESim, Quote: q.Marshal()}, nil
}

// Verifier verifies sim quotes against trusted sim root CAs.
type Verifier struct {
	roots *x509.CertPool
	// Now is the verification time; nil means time.Now.
	Now func() time.Time
}

// NewVerifier trusts the given sim root CAs.
func NewVerifier(cas ...*x509.Certificate) *Verifier {
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return &Verifier{roots: pool}
}

// Verify checks a sim quote's platform certificate and signature and
// returns its claims (always tee=sim, debug=true).
func (v *Verifier) Verify(_ context.Context, ev *attest.Evidence) (*attest.Claims, error) {
	if ev == nil || ev.TEE != attest.TEESim {
		return nil, fmt.Errorf("verifying sim quote: evidence is not tee=sim: %w", attest.ErrUnsupported)
	}
	q, err := ParseQuote(ev.Quote)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	cert, err := x509.ParseCertificate(q.CertDER)
	if err != nil {
		return nil, fmt.Errorf("parsing sim platform certificate: %v: %w", err, attest.ErrMalformed)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: v.roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("verifying sim platform certificate: %v: %w", err, attest.ErrChain)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("verifying sim quote: platform key is not ECDSA: %w", attest.ErrUnsupported)
	}
	digest := sha256.Sum256(q.signed)
	if !ecdsa.VerifyASN1(pub, digest[:], q.Signature) {
		return nil, fmt.Errorf("verifying sim quote signature: %w", attest.ErrSignature)
	}
	b := q.Body
	return &attest.Claims{
		TEE:         attest.TEESim,
		Measurement: b.Measurement[:],
		Signer:      b.Signer[:],
		ProductID:   b.ProductID,
		SVN:         b.SVN,
		Debug:       true, // sim memory is readable by the host, whatever the attributes say
		ReportData:  b.ReportData[:],
		TCBStatus:   attest.TCBNotApplicable,
		Platform:    attest.Platform{PlatformID: hex.EncodeToString(cert.SerialNumber.Bytes())},
		IssuedAt:    time.Unix(b.IssuedAt, 0).UTC(),
	}, nil
}
