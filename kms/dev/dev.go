// Package dev sets up a development key service (`veil kms serve --dev`):
// on first start it initializes the store in dev mode and writes, in one
// directory, the root key, the admin token, a development CA and a server
// certificate signed by it; later starts read them back, so the service
// unseals itself and keeps its address, CA and token across restarts.
//
// It protects against mistaking one data directory for the other kind: a
// store initialized for shares (veil kms init) is refused (ErrNotDev), and
// the files holding secrets are created owner-only (0600) and never
// overwritten. It does not protect the root key at all: it is written in
// the clear next to the data, so anyone who can read the directory can
// read every key. A development service is for trials on one machine only.
package dev

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/veil-tee/veil/internal/fsutil"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/store"
)

// Files in the dev directory.
const (
	RootKeyFile    = "root.key"    // hex root key (0600)
	AdminTokenFile = "admin.token" // admin token (0600)
	CertFile       = "server.pem"  // server certificate (PEM)
	KeyFile        = "server.key"  // server private key (PEM, 0600)
	CAFile         = "ca.pem"      // the development CA clients trust
	// EnvFile holds the export lines a running --dev service printed; it
	// exists while the service runs (veil kms env reads it).
	EnvFile = "env"
)

// ErrNotDev: the store was initialized for shares, not for development.
var ErrNotDev = errors.New("the data directory was initialized without --dev")

// Service is what a development key service starts with.
type Service struct {
	Cert       tls.Certificate // server certificate, signed by the CA in CAFile
	RootKey    []byte          // unseals the store; clear it when done
	AdminToken string
}

// Setup initializes st in dev mode and writes the files in dir on first
// start, and returns the service's certificate, root key and admin token.
// The certificate names localhost, 127.0.0.1, ::1 and the host of addr.
func Setup(ctx context.Context, st store.Store, dir, addr string) (*Service, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	rootPath, tokPath := filepath.Join(dir, RootKeyFile), filepath.Join(dir, AdminTokenFile)
	if _, err := os.Stat(rootPath); errors.Is(err, os.ErrNotExist) {
		res, err := kms.Initialize(ctx, st, kms.ModeDev, 0, 0, time.Now())
		if errors.Is(err, kms.ErrAlreadyInit) {
			return nil, ErrNotDev
		}
		if err != nil {
			return nil, err
		}
		if err := fsutil.WriteFile(rootPath, []byte(hex.EncodeToString(res.RootKey)+"\n"), 0o600, false); err != nil {
			return nil, err
		}
		clear(res.RootKey)
		if err := fsutil.WriteFile(tokPath, []byte(res.AdminToken+"\n"), 0o600, false); err != nil {
			return nil, err
		}
	}
	rk, err := readTrimmed(rootPath)
	if err != nil {
		return nil, err
	}
	root, err := hex.DecodeString(rk)
	if err != nil {
		return nil, fmt.Errorf("%s is not a hex root key", rootPath)
	}
	token, err := readTrimmed(tokPath)
	if err != nil {
		return nil, err
	}
	certPath, keyPath, caPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile), filepath.Join(dir, CAFile)
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		hosts := []string{"127.0.0.1", "::1", "localhost"}
		if h, _, err := net.SplitHostPort(addr); err == nil && h != "" {
			hosts = append(hosts, h)
		}
		dc, err := kms.NewDevCertificates(hosts, time.Now())
		if err != nil {
			return nil, err
		}
		for _, f := range []struct {
			p    string
			b    []byte
			mode os.FileMode
		}{{keyPath, dc.KeyPEM, 0o600}, {certPath, dc.CertPEM, 0o644}, {caPath, dc.CAPEM, 0o644}} {
			if err := fsutil.WriteFile(f.p, f.b, f.mode, true); err != nil {
				return nil, err
			}
		}
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("loading the dev certificate: %w", err)
	}
	return &Service{Cert: cert, RootKey: root, AdminToken: token}, nil
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
