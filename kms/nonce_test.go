package kms

import (
	"errors"
	"testing"
	"time"
)

func TestNonceCache(t *testing.T) {
	c := newNonceCache(2)
	now := time.Unix(1000, 0)
	if err := c.add("a", now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if err := c.add("a", now.Add(time.Minute), now); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay: %v", err)
	}
	c.add("b", now.Add(time.Minute), now)
	if err := c.add("c", now.Add(time.Minute), now); !errors.Is(err, ErrReplayCacheFull) {
		t.Fatalf("full: %v", err)
	}
	// Once expired, entries are swept and the space is reused.
	later := now.Add(2 * time.Minute)
	if err := c.add("c", later.Add(time.Minute), later); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if err := c.add("a", later.Add(time.Minute), later); err != nil {
		t.Fatalf("expired nonce is remembered past its window: %v", err)
	}
}
