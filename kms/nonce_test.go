package kms

import (
	"errors"
	"testing"
	"time"
)

func TestNonceCache(t *testing.T) {
	c := newNonceCache(2)
	now := time.Unix(1000, 0)
	if err := c.add("app1", "a", now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if err := c.add("app1", "a", now.Add(time.Minute), now); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay: %v", err)
	}
	c.add("app1", "b", now.Add(time.Minute), now)
	if err := c.add("app1", "c", now.Add(time.Minute), now); !errors.Is(err, ErrReplayCacheFull) {
		t.Fatalf("full: %v", err)
	}
	// Another app has its own bound: app1 filling its share does not
	// refuse app2 (nor does the same nonce from another app count).
	for _, n := range []string{"a", "b"} {
		if err := c.add("app2", n, now.Add(time.Minute), now); err != nil {
			t.Fatalf("app2 while app1 is full: %v", err)
		}
	}
	// Once expired, entries are swept and the space is reused.
	later := now.Add(2 * time.Minute)
	if err := c.add("app1", "c", later.Add(time.Minute), later); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if err := c.add("app1", "a", later.Add(time.Minute), later); err != nil {
		t.Fatalf("expired nonce is remembered past its window: %v", err)
	}
}

// TestNonceCacheExpiresInExpiryOrder: nonces arrive with timestamps out
// of order (clients' clocks differ); each is remembered exactly until its
// own expiry, whatever the order of arrival.
func TestNonceCacheExpiresInExpiryOrder(t *testing.T) {
	c := newNonceCache(1000)
	base := time.Unix(5000, 0)
	exp := map[string]time.Time{}
	for i, off := range []int{50, 10, 90, 30, 70, 20, 80, 60, 40, 0} {
		n := string(rune('a' + i))
		exp[n] = base.Add(time.Duration(off) * time.Second)
		if err := c.add("app", n, exp[n], base.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	for s := 0; s <= 100; s += 5 {
		now := base.Add(time.Duration(s) * time.Second)
		for n, e := range exp {
			err := c.add("app", n, e, now)
			if e.After(now) && !errors.Is(err, ErrReplayed) {
				t.Fatalf("at +%ds nonce %s (expires +%s) was forgotten early: %v", s, n, e.Sub(base), err)
			}
			if !e.After(now) {
				if err != nil {
					t.Fatalf("at +%ds nonce %s (expired +%s) still refused: %v", s, n, e.Sub(base), err)
				}
				delete(exp, n) // re-added with its old expiry: expired at once
			}
		}
	}
}
