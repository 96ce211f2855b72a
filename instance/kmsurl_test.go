package instance

import "testing"

func TestKMSURLReplicas(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1:8443":             "https://10.0.0.1:8443",
		"https://kms.example:8443/": "https://kms.example:8443",
		"a:1, https://b:2/,c:3":     "https://a:1,https://b:2,https://c:3",
	} {
		if got := kmsURL(in); got != want {
			t.Errorf("kmsURL(%q) = %q, want %q", in, got, want)
		}
	}
}
