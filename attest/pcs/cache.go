package pcs

import (
	"crypto/sha256"
	"crypto/x509"
	"sync"
)

// Verification of certificate chains and collateral signatures does not
// depend on the time, so its result is cached; validity windows and CRLs
// are checked on every call. Caches are bounded and keyed by content.
const maxCached = 256

type boundedSet[V any] struct {
	mu sync.Mutex
	m  map[[32]byte]V
}

func (s *boundedSet[V]) get(k [32]byte) (V, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok
}

func (s *boundedSet[V]) put(k [32]byte, v V) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil || len(s.m) >= maxCached {
		s.m = make(map[[32]byte]V)
	}
	s.m[k] = v
}

var (
	chainsVerified boundedSet[bool]
	pemChains      boundedSet[[]*x509.Certificate]
)

func chainKey(chain, roots []*x509.Certificate) [32]byte {
	h := sha256.New()
	for _, c := range chain {
		d := sha256.Sum256(c.Raw)
		h.Write(d[:])
	}
	h.Write([]byte{0})
	for _, c := range roots {
		d := sha256.Sum256(c.Raw)
		h.Write(d[:])
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// ParsePEMChainCached is ParsePEMChain with a bounded cache keyed by the
// input's hash (PCK chains repeat for every quote of a platform). The
// returned certificates must not be modified.
func ParsePEMChainCached(b []byte) ([]*x509.Certificate, error) {
	k := sha256.Sum256(b)
	if c, ok := pemChains.get(k); ok {
		return c, nil
	}
	c, err := ParsePEMChain(b)
	if err != nil {
		return nil, err
	}
	pemChains.put(k, c)
	return c, nil
}
