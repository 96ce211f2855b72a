package kms

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/veil-tee/veil/kms/store"
)

// TestUnreadableAnchorClassified: a database error while reading the
// audit log's anchors (a connection ended by a database restart) must not
// latch the service as damaged; a record failing its MAC or not decoding
// must.
func TestUnreadableAnchorClassified(t *testing.T) {
	var ec *errChain
	transient := fmt.Errorf("reading meta/audit_genesis: %w", errors.New("FATAL: terminating connection due to administrator command (SQLSTATE 57P01)"))
	if err := unreadable("the genesis", transient); errors.As(err, &ec) {
		t.Fatalf("a lost connection was taken for damage: %v", err)
	}
	if err := unreadable("the genesis", fmt.Errorf("x: %w", store.ErrUnavailable)); errors.As(err, &ec) {
		t.Fatalf("an unreachable store was taken for damage: %v", err)
	}
	var v struct{}
	bad := json.Unmarshal([]byte("{"), &v)
	for _, err := range []error{&store.IntegrityError{}, fmt.Errorf("decoding meta/audit_head: %w", bad)} {
		if got := unreadable("the head", err); !errors.As(got, &ec) {
			t.Errorf("%v: not taken for damage", err)
		}
	}
}
