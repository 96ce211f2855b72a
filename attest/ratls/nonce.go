package ratls

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrStale: the certificate's nonce is missing, unknown, used or expired.
var ErrStale = errors.New("RA-TLS evidence is not fresh")

// Nonces issues server-chosen nonces and accepts each once within Window.
// The replay window is therefore Window: evidence made for a nonce is
// accepted only for a single handshake within Window of the nonce's issue.
type Nonces struct {
	Window time.Duration
	// Max bounds outstanding nonces (default 4096); the oldest are dropped.
	Max int

	mu     sync.Mutex
	issued map[string]time.Time
	order  []string
}

// NewNonces returns a nonce store with the given replay window.
func NewNonces(window time.Duration) *Nonces {
	return &Nonces{Window: window, issued: map[string]time.Time{}}
}

// New issues a fresh 32-byte nonce at now.
func (n *Nonces) New(now time.Time) []byte {
	b := make([]byte, nonceSize)
	rand.Read(b)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.issued == nil {
		n.issued = map[string]time.Time{}
	}
	max := n.Max
	if max <= 0 {
		max = 4096
	}
	for len(n.order) >= max {
		delete(n.issued, n.order[0])
		n.order = n.order[1:]
	}
	k := hex.EncodeToString(b)
	n.issued[k] = now
	n.order = append(n.order, k)
	return b
}

// Consume accepts nonce once if it was issued within Window before now.
func (n *Nonces) Consume(nonce []byte, now time.Time) error {
	k := hex.EncodeToString(nonce)
	n.mu.Lock()
	defer n.mu.Unlock()
	at, ok := n.issued[k]
	if !ok {
		return fmt.Errorf("nonce unknown or already used: %w", ErrStale)
	}
	delete(n.issued, k)
	if now.Sub(at) > n.Window {
		return fmt.Errorf("nonce issued at %s is older than %s: %w", at.UTC().Format(time.RFC3339), n.Window, ErrStale)
	}
	return nil
}
