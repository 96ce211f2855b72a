// Package secretprov serves Gramine's secret provisioning to SGX
// workloads from the key service: a Gramine enclave whose
// secret_prov_attest library connects over TLS, presenting a self-signed
// RA-TLS certificate with its quote, receives one secret of the key
// service when that certificate's evidence verifies, binds the
// certificate's key, and satisfies one of the secret's release policies.
// Releases and refusals go through kms.Service and are audited like
// releases over the key service's HTTPS API.
//
// What it protects against: a client that is not an attested enclave (no
// evidence, evidence from an untrusted platform, evidence bound to another
// key, an expired certificate) and an enclave the secret's policy does not
// name. The server's own TLS certificate lets the enclave check it talks
// to the right service (Gramine's SECRET_PROVISION_CA_CHAIN_PATH).
//
// What it does not protect against: unlike the HTTPS workload API, it
// accepts evidence the enclave asked for itself (that is how Gramine
// attests), so any code in an enclave with a measurement the policy allows
// gets the secret, including a program inside a veil instance whose
// runtime has that measurement: name here only secrets meant for the
// enclave's program. Without a nonce, a certificate and key stolen from an
// enclave can be replayed until the policy's max_evidence_age runs out.
package secretprov

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/veil-tee/veil/kms"
)

// Options configure a Server.
type Options struct {
	// Service releases the secret and audits every decision. Required.
	Service *kms.Service
	// Verifier authenticates the enclave from its RA-TLS certificate
	// (workload.NewEnclaveVerifier, with the trusted roots and clock).
	// Required.
	Verifier kms.WorkloadVerifier
	// Secret is the id of the key service secret sent (its latest
	// version). Required.
	Secret string
	// Certificate is the server's TLS certificate. Required.
	Certificate tls.Certificate
	// Logger receives one line per connection; default slog.Default.
	Logger *slog.Logger
	// Timeout bounds one connection from accept to the last byte sent;
	// default 30 seconds.
	Timeout time.Duration
	// MaxConns bounds the connections served at once; default 64.
	MaxConns int
	// Refused, when set, observes each refusal with its cause (the
	// verification error, or the key service's refusal).
	Refused func(error)
}

// Server is a secret-provisioning listener.
type Server struct {
	o   Options
	tls *tls.Config
}

// New checks o and returns a Server.
func New(o Options) (*Server, error) {
	switch {
	case o.Service == nil:
		return nil, errors.New("secret provisioning: no key service")
	case o.Verifier == nil:
		return nil, errors.New("secret provisioning: no workload verifier")
	case o.Secret == "":
		return nil, errors.New("secret provisioning: no secret named")
	case len(o.Certificate.Certificate) == 0:
		return nil, errors.New("secret provisioning: no TLS certificate")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 64
	}
	c := &tls.Config{
		Certificates: []tls.Certificate{o.Certificate},
		// Gramine's mbedTLS speaks TLS 1.2.
		MinVersion: tls.VersionTLS12,
		// The client's self-signed RA-TLS leaf has no chain: it is
		// verified by its evidence after the handshake, so that a refusal
		// is audited with its reason.
		ClientAuth: tls.RequireAnyClientCert,
	}
	return &Server{o: o, tls: c}, nil
}

// Serve accepts connections on ln until ctx is done, then closes ln and
// waits for the connections being served.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	sem := make(chan struct{}, s.o.MaxConns)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("secret provisioning: accepting: %w", err)
		}
		select {
		case sem <- struct{}{}:
		default:
			s.o.Logger.Warn("secret provisioning: too many connections", "remote", conn.RemoteAddr().String())
			conn.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.serveConn(ctx, conn)
		}()
	}
}

// serveConn runs the protocol on one connection: handshake, request,
// verification and decision, response.
func (s *Server) serveConn(ctx context.Context, raw net.Conn) {
	ctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(s.o.Timeout))
	log := s.o.Logger.With("remote", raw.RemoteAddr().String(), "secret", s.o.Secret)
	conn := tls.Server(raw, s.tls)
	if err := conn.HandshakeContext(ctx); err != nil {
		log.Info("secret provisioning: handshake failed", "err", err)
		return
	}
	if err := ReadRequest(conn); err != nil {
		log.Info("secret provisioning: no request", "err", err)
		return
	}
	secret, err := s.release(ctx, conn.ConnectionState())
	if err != nil {
		if s.o.Refused != nil {
			s.o.Refused(err)
		}
		log.Info("secret provisioning: refused", "err", err)
		return
	}
	defer clear(secret)
	if err := WriteResponse(conn, secret); err != nil {
		log.Info("secret provisioning: sending the secret", "err", err)
		return
	}
	_ = conn.CloseWrite()
	log.Info("secret provisioning: released")
}

// release authenticates the enclave and asks the key service for the
// secret on its behalf; both refusals are audited by the service.
func (s *Server) release(ctx context.Context, cs tls.ConnectionState) ([]byte, error) {
	w, err := s.o.Verifier.VerifyPeer(cs.PeerCertificates)
	if err != nil {
		if aerr := s.o.Service.RefuseUnverifiedWorkload(ctx, s.o.Secret, err); !errors.Is(aerr, kms.ErrWorkloadAuth) {
			return nil, fmt.Errorf("%w (and auditing the refusal: %v)", err, aerr)
		}
		return nil, err
	}
	sec, err := s.o.Service.GetSecret(ctx, kms.Caller{Kind: kms.KindWorkload, Workload: &w}, s.o.Secret, 0)
	if err != nil {
		return nil, err
	}
	return sec.Value, nil
}
