package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestBoltRoundTripAndPersistence(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := OpenBolt(dir, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(ctx, func(tx Tx) error {
		for i := range 5 {
			if err := tx.Put("keys", fmt.Sprintf("k%02d", i), []byte{byte(i)}); err != nil {
				return err
			}
		}
		return tx.Put("apps", "k99", []byte("other"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenBolt(dir, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []string
	err = s.View(ctx, func(tx Tx) error {
		if _, err := tx.Get("keys", "missing"); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("missing key: got %v, want ErrNotFound", err)
		}
		k, v, err := tx.Last("keys")
		if err != nil || k != "k04" || v[0] != 4 {
			return fmt.Errorf("Last = %q %v %v", k, v, err)
		}
		return tx.List("keys", "k0", func(k string, v []byte) error {
			got = append(got, k)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 || got[0] != "k00" || got[4] != "k04" {
		t.Fatalf("List = %v", got)
	}
	// A failing Update leaves nothing behind.
	boom := errors.New("boom")
	if err := s.Update(ctx, func(tx Tx) error {
		if err := tx.Delete("keys", "k00"); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("Update error = %v", err)
	}
	if err := s.View(ctx, func(tx Tx) error { _, err := tx.Get("keys", "k00"); return err }); err != nil {
		t.Fatalf("rolled back delete was applied: %v", err)
	}
}

func TestBoltSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenBolt(dir, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = OpenBolt(dir, BoltOptions{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("lock wait not bounded")
	}
}
