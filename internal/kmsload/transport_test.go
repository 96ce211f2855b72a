package kmsload

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/client"
	devkms "github.com/veil-tee/veil/kms/dev"
	"github.com/veil-tee/veil/kms/store"
)

// benchClients is the concurrency of the performance target: 200 clients,
// each with its own kept-alive connection.
const benchClients = 200

// target is a server on loopback the benchmark drives.
type target struct {
	url, adminToken string
	ca              []byte
	apps            []loadApp // with a real key service: enrolled apps with a data key each
}

// startKMS starts a real key service on a bbolt store in a temporary
// directory, as `veil kms serve --dev` sets it up, and enrolls apps.
func startKMS(tb testing.TB, apps int) target {
	ctx, cancel := context.WithCancel(context.Background())
	dir := tb.TempDir()
	st, err := store.OpenBolt(dir, store.BoltOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ds, err := devkms.Setup(ctx, st, filepath.Join(dir, "dev"), ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, "dev", devkms.CAFile))
	if err != nil {
		tb.Fatal(err)
	}
	svc, err := kms.New(ctx, kms.Options{Store: st})
	if err != nil {
		tb.Fatal(err)
	}
	if err := svc.UnsealWithRootKey(ds.RootKey); err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln, ds.Cert) }()
	tb.Cleanup(func() {
		cancel()
		<-done
		svc.Close()
	})
	t := target{url: "https://" + ln.Addr().String(), ca: ca, adminToken: ds.AdminToken}
	if apps > 0 {
		if t.apps, err = setupApps(ctx, t.url, ca, ds.AdminToken, apps); err != nil {
			tb.Fatal(err)
		}
	}
	return t
}

// startFloor starts the key service's HTTP server (kms.HTTPServer, and
// kms.TLSConfig when tls is set) with a trivial handler in place of the
// key service: it reads the request body and answers with a fixed
// DecryptResponse carrying a 32-byte plaintext, the same size as a data
// key's unwrap. Authentication, replay cache, key read, unwrap and audit
// are all absent: what remains is what HTTP (and TLS) cost.
func startFloor(tb testing.TB, useTLS bool) target {
	pt := make([]byte, 32)
	rand.Read(pt)
	resp, err := json.Marshal(api.DecryptResponse{KeyID: "floor", KeyVersion: 1, Plaintext: pt})
	if err != nil {
		tb.Fatal(err)
	}
	resp = append(resp, '\n')
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20)); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(resp)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := kms.HTTPServer(h, slog.New(slog.DiscardHandler))
	t := target{url: "http://" + ln.Addr().String()}
	if useTLS {
		dc, err := kms.NewDevCertificates([]string{"127.0.0.1"}, time.Now())
		if err != nil {
			tb.Fatal(err)
		}
		cert, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
		if err != nil {
			tb.Fatal(err)
		}
		ln = tls.NewListener(ln, kms.TLSConfig(cert))
		t.url, t.ca = "https://"+ln.Addr().String(), dc.CAPEM
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	tb.Cleanup(func() {
		srv.Close()
		<-done
	})
	// Any signed request does: the handler checks nothing.
	t.apps = []loadApp{{id: "floor", key: "floor-key", ct: []byte("a 32-byte body for the floor...."), pt: pt}}
	return t
}

// BenchmarkTransport measures what one data-key unwrap costs with 200
// kept-alive clients in this process (server and clients share the
// machine's cores, as in scripts/kms-load.sh), against the floor of the
// same transport with a trivial handler:
//
//   - floor-plain: kms.HTTPServer without TLS, trivial handler (lean
//     client only: kms/client speaks https only);
//   - floor-tls: the same over kms.TLSConfig (TLS 1.3);
//   - kms-bbolt: the key service itself on a bbolt store (app HMAC
//     signature, nonce, key record, unwrap, durable audit).
//
// Each with the load's two clients: "client" (kms/client, net/http's
// transport) and "lean" (HTTP/1.1 written on the connection directly).
// cpu-us/op is user + system time of the process over the operations.
func BenchmarkTransport(b *testing.B) {
	for _, tg := range []struct {
		name  string
		start func(testing.TB) target
	}{
		{"floor-plain", func(tb testing.TB) target { return startFloor(tb, false) }},
		{"floor-tls", func(tb testing.TB) target { return startFloor(tb, true) }},
		{"kms-bbolt", func(tb testing.TB) target { return startKMS(tb, (benchClients+9)/10) }},
	} {
		for _, lean := range []bool{false, true} {
			name := tg.name + "/client"
			if lean {
				name = tg.name + "/lean"
			}
			b.Run(name, func(b *testing.B) {
				if !lean && tg.name == "floor-plain" {
					b.Skip("kms/client speaks https only")
				}
				t := tg.start(b)
				ops := make([]func() error, benchClients)
				for w := range ops {
					app := t.apps[w%len(t.apps)]
					if lean {
						lc, err := dialLean(t.url, t.ca, app.id, app.key, app.ct, app.pt)
						if err != nil {
							b.Fatal(err)
						}
						b.Cleanup(lc.close)
						ops[w] = lc.decrypt
						continue
					}
					cl, err := client.New(client.Config{URL: t.url, CAPEM: t.ca, AppID: app.id, APIKey: app.key, Timeout: 30 * time.Second})
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { cl.Close() })
					ops[w] = func() error {
						_, err := cl.Decrypt(context.Background(), app.ct, nil)
						return err
					}
				}
				BenchOps(b, ops)
			})
		}
	}
}
