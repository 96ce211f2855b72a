package kms_test

import (
	"crypto/tls"
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/kmsload"
	"github.com/veil-tee/veil/internal/pgtest"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/client"
)

// loadUnwrap runs b.N data-key unwraps with `workers` concurrent clients
// over kept-alive TLS 1.3 connections to a real server on loopback, and
// reports throughput, latency percentiles and CPU per op
// (kmsload.BenchOps).
func loadUnwrap(b *testing.B, c *client.Client, ct, aad []byte, workers int) {
	ops := make([]func() error, workers)
	for w := range ops {
		ops[w] = func() error {
			_, err := c.Decrypt(ctx, ct, aad)
			return err
		}
	}
	kmsload.BenchOps(b, ops)
}

func BenchmarkAppDataKeyUnwrap(b *testing.B) {
	s := newServer(b, false)
	bob, _ := s.app(b, "bob")
	bob.CreateKey(ctx, "cmk", "", "")
	dk, err := bob.GenerateDataKey(ctx, "cmk", 32, []byte("file"))
	if err != nil {
		b.Fatal(err)
	}
	loadUnwrap(b, bob, dk.Ciphertext, []byte("file"), 32)
}

func BenchmarkWorkloadDataKeyUnwrap(b *testing.B) {
	s := newServer(b, false)
	bob, _ := s.app(b, "bob")
	bob.CreateKey(ctx, "cmk", "", "")
	meas := hexString("cd").repeat32()
	bob.CreatePolicy(ctx, "p", json.RawMessage(`{"measurements":["`+meas+`"]}`))
	bob.AttachKeyPolicy(ctx, "cmk", "p")
	dk, err := bob.GenerateDataKey(ctx, "cmk", 32, nil)
	if err != nil {
		b.Fatal(err)
	}
	cert := workloadCert(b, kms.Workload{TEE: "sim", Measurement: meas})
	wl := s.client(b, client.Config{WorkloadCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
	loadUnwrap(b, wl, dk.Ciphertext, nil, 32)
}

// BenchmarkPostgresAppDataKeyUnwrap: BenchmarkAppDataKeyUnwrap through
// one of two replicas on a PostgreSQL store (started by the benchmark, so
// it needs postgresql-15): every unwrap also records its nonce and its
// audit entry in the database.
func BenchmarkPostgresAppDataKeyUnwrap(b *testing.B) {
	pg := pgtest.Start(b)
	rs := newReplicas(b, pg.NewDatabase(b), 2)
	r, err := rs[0].adminClient(b).Enroll(ctx, "bob")
	if err != nil {
		b.Fatal(err)
	}
	creds := client.Config{AppID: r.AppID, APIKey: r.APIKey}
	bob := clientOn(b, rs[0], creds)
	bob.CreateKey(ctx, "cmk", "", "")
	dk, err := bob.GenerateDataKey(ctx, "cmk", 32, []byte("file"))
	if err != nil {
		b.Fatal(err)
	}
	loadUnwrap(b, bob, dk.Ciphertext, []byte("file"), 32)
}

// BenchmarkSecretPut measures audited writes (one secret per op) on the
// bbolt store and on PostgreSQL with two replicas taking writes at once.
func BenchmarkSecretPut(b *testing.B) {
	run := func(b *testing.B, clients []*client.Client) {
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := clients[w%len(clients)]
				for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
					if _, err := c.PutSecret(ctx, "s"+strconv.FormatInt(i, 10), []byte("v"), ""); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
	}
	b.Run("bolt", func(b *testing.B) {
		s := newServer(b, false)
		bob, _ := s.app(b, "bob")
		run(b, []*client.Client{bob})
	})
	b.Run("postgres-2-replicas", func(b *testing.B) {
		pg := pgtest.Start(b)
		rs := newReplicas(b, pg.NewDatabase(b), 2)
		r, err := rs[0].adminClient(b).Enroll(ctx, "bob")
		if err != nil {
			b.Fatal(err)
		}
		creds := client.Config{AppID: r.AppID, APIKey: r.APIKey}
		run(b, []*client.Client{clientOn(b, rs[0], creds), clientOn(b, rs[1], creds)})
	})
}
