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
