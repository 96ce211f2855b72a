package client

import (
	"errors"
	"testing"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/seal"
)

func TestConfigChecks(t *testing.T) {
	for _, c := range []Config{
		{URL: "http://127.0.0.1:1"},
		{URL: "https://127.0.0.1:1/prefix"},
		{URL: "https://127.0.0.1:1", CAPEM: []byte("not pem")},
		{URL: "https://127.0.0.1:1", AppID: "a_1"},
		{URL: "https://127.0.0.1:1", APIKey: "k"},
	} {
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: got %v, want ErrConfig", c, err)
		}
	}
	if _, err := New(Config{URL: "https://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
}

func TestErrorsMatchByCode(t *testing.T) {
	e := &Error{Status: 403, Problem: problem("policy_denied")}
	if !errors.Is(e, ErrPolicyDenied) || errors.Is(e, ErrForbidden) {
		t.Fatal("Is does not match on code")
	}
}

func TestSlotKeyID(t *testing.T) {
	id, v, err := ParseSlotKeyID(SlotKeyID("k_ab", 12))
	if err != nil || id != "k_ab" || v != 12 {
		t.Fatalf("round trip: %q %d %v", id, v, err)
	}
	for _, bad := range []string{"", "k_ab", "k_ab/v", "k_ab/v0", "/v1", "k_ab/vx"} {
		if _, _, err := ParseSlotKeyID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	s := &Slot{}
	if _, err := s.UnwrapKey(seal.Slot{Kind: "file"}, nil); !errors.Is(err, seal.ErrSlotMismatch) {
		t.Fatalf("file slot: %v", err)
	}
	if _, err := s.WrapKey(make([]byte, 32), nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("wrap without key: %v", err)
	}
}

func FuzzParseSlotKeyID(f *testing.F) {
	f.Add("k_0123/v1")
	f.Add("x/v/v2")
	f.Fuzz(func(t *testing.T, s string) {
		id, v, err := ParseSlotKeyID(s)
		if err != nil {
			return
		}
		if _, _, err := ParseSlotKeyID(SlotKeyID(id, v)); err != nil {
			t.Fatalf("re-formatted id does not parse: %v", err)
		}
	})
}

func problem(code string) api.Problem { return api.Problem{Code: code} }
