package store

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"testing"
)

func testKey() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

// TestRecordMACVector pins the MAC (the same vector is in docs/kms.md's
// record format note and can be checked by a PostgreSQL implementation).
func TestRecordMACVector(t *testing.T) {
	got := hex.EncodeToString(RecordMAC(testKey(), "policies", "p_0123456789abcdef0123456789abcdef", []byte(`{"measurements":["5f"]}`)))
	if got != "adb158e8902347ee55e524b7eced328d1cf6b687879b47dad3b3bfd28df62429" {
		t.Fatalf("RecordMAC = %s", got)
	}
}

// TestEnvelopeRefusesEditsAndMoves: every single-byte edit of a sealed
// value, and the same value under another key or bucket, or with another
// MAC key, fails with an *IntegrityError naming the record.
func TestEnvelopeRefusesEditsAndMoves(t *testing.T) {
	k := testKey()
	v := []byte(`{"owner":"a_1","policies":["p_1"]}`)
	sealed := SealValue(k, "keys", "k_1", v)
	if got, err := OpenValue(k, "keys", "k_1", sealed); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("open: %q %v", got, err)
	}
	for i := range sealed {
		b := bytes.Clone(sealed)
		b[i] ^= 0x01
		if _, err := OpenValue(k, "keys", "k_1", b); !errors.Is(err, ErrIntegrity) {
			t.Fatalf("byte %d edited: %v", i, err)
		}
	}
	other := bytes.Clone(k)
	other[0] ^= 1
	for name, open := range map[string]func() error{
		"other key":    func() error { _, err := OpenValue(k, "keys", "k_2", sealed); return err },
		"other bucket": func() error { _, err := OpenValue(k, "secrets", "k_1", sealed); return err },
		"other secret": func() error { _, err := OpenValue(other, "keys", "k_1", sealed); return err },
		"no envelope":  func() error { _, err := OpenValue(k, "keys", "k_1", v); return err },
		"truncated":    func() error { _, err := OpenValue(k, "keys", "k_1", sealed[:len(sealed)-1]); return err },
	} {
		var ie *IntegrityError
		if err := open(); !errors.As(err, &ie) || ie.Bucket == "" || ie.Key == "" {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestWithIntegrity: protected records are sealed on Put and checked on
// Get, List and Last (a raw write fails and is reported to onFail); other
// records pass through untouched.
func TestWithIntegrity(t *testing.T) {
	ctx := context.Background()
	s, err := OpenBolt(t.TempDir(), BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := testKey()
	prot := func(bucket, _ string) bool { return bucket == "keys" }
	var failed []string
	onFail := func(e *IntegrityError) { failed = append(failed, e.Bucket+"/"+e.Key) }
	err = s.Update(ctx, func(tx Tx) error {
		it := WithIntegrity(tx, k, k, prot, onFail)
		it.Put("keys", "a", []byte("1"))
		it.Put("audit", "x", []byte("plain"))
		return tx.Put("keys", "b", []byte("forged")) // raw, no MAC
	})
	if err != nil {
		t.Fatal(err)
	}
	s.View(ctx, func(tx Tx) error {
		raw, _ := tx.Get("audit", "x")
		if string(raw) != "plain" {
			t.Errorf("unprotected record changed: %q", raw)
		}
		it := WithIntegrity(tx, k, k, prot, onFail)
		if v, err := it.Get("keys", "a"); err != nil || string(v) != "1" {
			t.Errorf("get a: %q %v", v, err)
		}
		if _, err := it.Get("keys", "b"); !errors.Is(err, ErrIntegrity) {
			t.Errorf("get forged b: %v", err)
		}
		if err := it.List("keys", "", func(string, []byte) error { return nil }); !errors.Is(err, ErrIntegrity) {
			t.Errorf("list with forged b: %v", err)
		}
		if _, _, err := it.Last("keys"); !errors.Is(err, ErrIntegrity) {
			t.Errorf("last (forged b): %v", err)
		}
		return nil
	})
	if len(failed) != 3 || failed[0] != "keys/b" {
		t.Fatalf("failures reported: %v", failed)
	}
}

func FuzzOpenValue(f *testing.F) {
	k := testKey()
	f.Add(SealValue(k, "keys", "k_1", []byte(`{}`)))
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := OpenValue(k, "keys", "k_1", b)
		if err != nil {
			return
		}
		if !bytes.Equal(SealValue(k, "keys", "k_1", v), b) {
			t.Fatal("open then seal is not byte-identical")
		}
	})
}

// TestStateDigestFollowsWrites: the digest change accumulated by an
// IntegrityTx's writes equals the recomputed digest after them, across
// puts, overwrites and deletes; putting back an older authentic version of
// a record, or deleting one, changes the recomputed digest.
func TestStateDigestFollowsWrites(t *testing.T) {
	ctx := context.Background()
	s, err := OpenBolt(t.TempDir(), BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mk, sk := testKey(), bytes.Repeat([]byte{7}, 32)
	prot := func(bucket, _ string) bool { return bucket == "keys" || bucket == "apps" }
	buckets := []string{"keys", "apps", "audit"}
	var state StateDigest
	var oldA []byte
	step := func(fn func(it *IntegrityTx)) {
		t.Helper()
		err := s.Update(ctx, func(tx Tx) error {
			it := WithIntegrity(tx, mk, sk, prot, nil)
			fn(it)
			state = state.Add(it.TakeDelta())
			if d := it.TakeDelta(); d != (StateDigest{}) {
				t.Error("TakeDelta did not reset")
			}
			got, err := ComputeState(tx, sk, buckets, prot)
			if err != nil {
				return err
			}
			if got != state {
				t.Errorf("digest %x, recomputed %x", state, got)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	step(func(it *IntegrityTx) {
		it.Put("keys", "a", []byte("1"))
		it.Put("apps", "b", []byte("2"))
		it.Put("audit", "1", []byte("unprotected"))
	})
	s.View(ctx, func(tx Tx) error { oldA, _ = tx.Get("keys", "a"); oldA = bytes.Clone(oldA); return nil })
	step(func(it *IntegrityTx) { it.Put("keys", "a", []byte("1 revised")) })
	step(func(it *IntegrityTx) {
		it.Delete("apps", "b")
		it.Delete("apps", "missing")
		it.Put("keys", "c", []byte("3"))
	})
	for name, edit := range map[string]func(tx Tx) error{
		"older version put back": func(tx Tx) error { return tx.Put("keys", "a", oldA) },
		"record deleted":         func(tx Tx) error { return tx.Delete("keys", "c") },
	} {
		s.Update(ctx, func(tx Tx) error {
			edit(tx)
			got, _ := ComputeState(tx, sk, buckets, prot)
			if got == state {
				t.Errorf("%s: digest unchanged", name)
			}
			return errors.New("roll back this transaction")
		})
	}
}

func TestStateDigestArithmetic(t *testing.T) {
	a := StateElement([]byte("k"), "b", "x", []byte("v"))
	b := StateElement([]byte("k"), "b", "y", []byte("v"))
	if a.Add(b) != b.Add(a) || a.Add(b).Add(b.Neg()) != a || a.Add(a.Neg()) != (StateDigest{}) {
		t.Fatal("digest arithmetic")
	}
	var max StateDigest
	for i := range max {
		max[i] = 0xff
	}
	var one StateDigest
	one[31] = 1
	if max.Add(one) != (StateDigest{}) {
		t.Fatal("no wrap-around at 2^256")
	}
}
