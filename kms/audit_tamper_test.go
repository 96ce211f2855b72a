package kms_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/kms/store"
)

func seqKey(seq int) []byte { return fmt.Appendf(nil, "%020d", seq) }

// auditServer starts a server whose log holds a few entries and returns
// bob's credentials and the head's sequence number.
func auditServer(t *testing.T) (*server, client.Config, uint64) {
	t.Helper()
	s := newServer(t, false)
	bobC := enroll(t, s, "bob")
	bob := s.client(t, bobC)
	if _, err := bob.CreateKey(ctx, "k", "", ""); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		bob.Encrypt(ctx, "k", []byte("x"), nil)
	}
	probs, head, err := s.adminClient(t).VerifyAudit(ctx)
	if err != nil || len(probs) != 0 || head.Seq < 6 || !head.Authentic || head.Damaged != "" {
		t.Fatalf("fresh log: %v %+v %v", probs, head, err)
	}
	return s, bobC, head.Seq
}

func hasProblem(probs []audit.Problem, kind string, seq uint64) bool {
	for _, p := range probs {
		if p.Kind == kind && (seq == 0 || p.Seq == seq) {
			return true
		}
	}
	return false
}

// wantDamaged checks that the service refuses to append (a mutation is
// refused with audit_chain_damaged and adds no entry) and reports itself
// not ready with the reason, and in its metrics.
func wantDamaged(t *testing.T, s *server, bobC client.Config, reason string) {
	t.Helper()
	bob := s.client(t, bobC)
	_, err := bob.CreateKey(ctx, "k2", "", "")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Problem.Code != "audit_chain_damaged" || !strings.Contains(ce.Problem.Detail, reason) {
		t.Fatalf("mutation on a damaged chain: %v", err)
	}
	err = s.adminClient(t).Raw(ctx, "GET", "/readyz", nil, false, nil)
	if !errors.As(err, &ce) || ce.Problem.Code != "audit_chain_damaged" || !strings.Contains(ce.Problem.Detail, reason) {
		t.Fatalf("/readyz on a damaged chain: %v", err)
	}
	if m := metricsText(t, s); !strings.Contains(m, "veil_kms_audit_chain_damaged 1") {
		t.Fatal("metrics do not report the damaged chain")
	}
}

func TestAuditTamperingDetected(t *testing.T) {
	t.Run("head deleted", func(t *testing.T) {
		s, bobC, n := auditServer(t)
		s.stop()
		editBolt(t, s, func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("audit_head")) })
		s.start(s.certs, false)
		probs, _, err := s.adminClient(t).VerifyAudit(ctx)
		if err != nil || !hasProblem(probs, audit.Damaged, 0) {
			t.Fatalf("deleted head: %v %v", probs, err)
		}
		wantDamaged(t, s, bobC, "head is missing")
		es, _ := s.adminClient(t).AuditEntries(ctx, "", 0, 0)
		if uint64(len(es)) != n || es[len(es)-1].Seq != n {
			t.Fatalf("log changed after the refusal: %d entries, had %d", len(es), n)
		}
	})
	t.Run("head and every entry deleted", func(t *testing.T) {
		s, bobC, _ := auditServer(t)
		s.stop()
		editBolt(t, s, func(tx *bolt.Tx) error {
			if err := tx.DeleteBucket([]byte("audit")); err != nil {
				return err
			}
			if _, err := tx.CreateBucket([]byte("audit")); err != nil {
				return err
			}
			return tx.Bucket([]byte("meta")).Delete([]byte("audit_head"))
		})
		s.start(s.certs, false)
		probs, _, err := s.adminClient(t).VerifyAudit(ctx)
		if err != nil || !hasProblem(probs, audit.Damaged, 0) {
			t.Fatalf("emptied log reported as %v %v", probs, err)
		}
		wantDamaged(t, s, bobC, "head is missing")
	})
	t.Run("genesis deleted", func(t *testing.T) {
		s, bobC, _ := auditServer(t)
		s.stop()
		editBolt(t, s, func(tx *bolt.Tx) error {
			m := tx.Bucket([]byte("meta"))
			m.Delete([]byte("audit_head"))
			tx.DeleteBucket([]byte("audit"))
			tx.CreateBucket([]byte("audit"))
			return m.Delete([]byte("audit_genesis"))
		})
		s.start(s.certs, false)
		probs, _, err := s.adminClient(t).VerifyAudit(ctx)
		if err != nil || !hasProblem(probs, audit.Damaged, 0) {
			t.Fatalf("log without genesis reported as %v %v", probs, err)
		}
		wantDamaged(t, s, bobC, "genesis")
	})
	t.Run("tail deleted", func(t *testing.T) {
		s, bobC, n := auditServer(t)
		s.stop()
		editBolt(t, s, func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("audit"))
			b.Delete(seqKey(int(n)))
			return b.Delete(seqKey(int(n - 1)))
		})
		s.start(s.certs, false)
		probs, _, err := s.adminClient(t).VerifyAudit(ctx)
		if err != nil || !hasProblem(probs, audit.Deleted, n) || !hasProblem(probs, audit.Deleted, n-1) {
			t.Fatalf("deleted tail: %v %v", probs, err)
		}
		wantDamaged(t, s, bobC, fmt.Sprintf("entry at the head (%d) is missing", n))
	})
	t.Run("tail deleted and head rewound", func(t *testing.T) {
		// The attacker cannot write a head for the shorter log (its MAC
		// needs the root key); copying in an older head is a rollback of
		// that record, and the entries beyond it are reported.
		s, bobC, n := auditServer(t)
		var old []byte
		s.stop()
		editBolt(t, s, func(tx *bolt.Tx) error {
			old = append(old, tx.Bucket([]byte("meta")).Get([]byte("audit_head"))...)
			return nil
		})
		s.start(s.certs, false)
		s.client(t, bobC).Encrypt(ctx, "k", []byte("x"), nil)
		s.stop()
		editBolt(t, s, func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("audit_head"), old) })
		s.start(s.certs, false)
		probs, _, err := s.adminClient(t).VerifyAudit(ctx)
		if err != nil || !hasProblem(probs, audit.Appended, n+1) || !hasProblem(probs, audit.Damaged, 0) {
			t.Fatalf("entries beyond an old head: %v %v", probs, err)
		}
		wantDamaged(t, s, bobC, "beyond the authenticated head")
	})
	t.Run("middle entry deleted", func(t *testing.T) {
		s, _, _ := auditServer(t)
		s.stop()
		editBolt(t, s, func(tx *bolt.Tx) error { return tx.Bucket([]byte("audit")).Delete(seqKey(3)) })
		s.start(s.certs, false)
		probs, _, err := s.adminClient(t).VerifyAudit(ctx)
		if err != nil || !hasProblem(probs, audit.Deleted, 3) {
			t.Fatalf("deleted middle entry: %v %v", probs, err)
		}
	})
	t.Run("entries reordered", func(t *testing.T) {
		s, _, _ := auditServer(t)
		s.stop()
		editBolt(t, s, func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("audit"))
			two, three := append([]byte(nil), b.Get(seqKey(2))...), append([]byte(nil), b.Get(seqKey(3))...)
			b.Put(seqKey(2), three)
			return b.Put(seqKey(3), two)
		})
		s.start(s.certs, false)
		probs, _, err := s.adminClient(t).VerifyAudit(ctx)
		if err != nil || !hasProblem(probs, audit.Reordered, 0) {
			t.Fatalf("reordered entries: %v %v", probs, err)
		}
	})
	t.Run("whole file rolled back", func(t *testing.T) {
		s, bobC, _ := auditServer(t)
		path := s.dir + "/" + store.BoltFile
		s.stop()
		older, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s.start(s.certs, false)
		bob := s.client(t, bobC)
		for range 3 {
			bob.Encrypt(ctx, "k", []byte("x"), nil)
		}
		cp, err := s.adminClient(t).AuditCheckpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s.stop()
		if err := os.WriteFile(path, older, 0o600); err != nil {
			t.Fatal(err)
		}
		s.start(s.certs, false)
		adm := s.adminClient(t)
		// Without the checkpoint the older copy is a consistent log.
		if probs, _, err := adm.VerifyAudit(ctx); err != nil || len(probs) != 0 {
			t.Fatalf("older copy alone: %v %v", probs, err)
		}
		probs, _, err := adm.VerifyAuditCheckpoint(ctx, cp)
		if err != nil || !hasProblem(probs, audit.RolledBack, cp.Seq) {
			t.Fatalf("rollback before the checkpoint: %v %v", probs, err)
		}
		// New entries past the checkpoint's sequence number do not hide it.
		bob = s.client(t, bobC)
		for range 5 {
			bob.Encrypt(ctx, "k", []byte("y"), nil)
		}
		probs, _, err = adm.VerifyAuditCheckpoint(ctx, cp)
		if err != nil || !hasProblem(probs, audit.RolledBack, cp.Seq) {
			t.Fatalf("rollback then appends: %v %v", probs, err)
		}
		// An edited checkpoint is refused.
		cp.Seq--
		if _, _, err := adm.VerifyAuditCheckpoint(ctx, cp); !errors.Is(err, audit.ErrCheckpoint) {
			t.Fatalf("edited checkpoint: %v", err)
		}
	})
}

// TestReadyzReportsHealthyChain: the positive case of /readyz.
func TestReadyzReportsHealthyChain(t *testing.T) {
	s := newServer(t, false)
	resp, err := (&http.Client{Transport: transportOf(t, s)}).Get(s.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/readyz: %d", resp.StatusCode)
	}
}
