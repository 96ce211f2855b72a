package cli

import (
	"maps"
	"testing"
)

// The environment names a key service in capitals with _ for -; the flag
// by its veil.json name, and wins.
func TestKMSAddresses(t *testing.T) {
	env := []string{"PATH=/usr/bin", "VEIL_KMS_ADDRESS_BANK_2=b:2", "VEIL_KMS_ADDRESS_OWNER=a:1", "VEIL_KMS_URL=https://x:1"}
	got, err := kmsAddresses(env, []string{"owner=https://c:3"})
	if want := map[string]string{"bank-2": "b:2", "owner": "https://c:3"}; err != nil || !maps.Equal(got, want) {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
	if got, err := kmsAddresses([]string{"HOME=/"}, nil); err != nil || got != nil {
		t.Fatalf("none given: %v, %v", got, err)
	}
	for _, bad := range []string{"owner", "=a:1"} {
		if _, err := kmsAddresses(nil, []string{bad}); exitCode(err) != ExitUsage {
			t.Errorf("--kms-address %q: %v, want a usage error", bad, err)
		}
	}
}

// --kms-tries below 1 is a usage error, before anything is opened.
func TestKMSTriesBad(t *testing.T) {
	for _, n := range []int{0, -1} {
		r := runtimeOptions{dir: t.TempDir(), kmsTries: n}
		if _, _, err := r.options(&Env{}); exitCode(err) != ExitUsage {
			t.Errorf("--kms-tries %d: %v, want a usage error", n, err)
		}
	}
}
