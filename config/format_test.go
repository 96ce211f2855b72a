package config

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func mountsConfig(mount string) []byte {
	return []byte(`{"entrypoints": ["/usr/bin/"], "mounts": [` + mount + `]}`)
}

func TestSealedFormat(t *testing.T) {
	ok := `{"target": "/data", "type": "sealed", "source": "enc", "key": "file:wrap.key", "format": "gramine-pf", "pf_path": "enc"}`
	c, err := Parse(mountsConfig(ok))
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Mounts[0]; m.Format != FormatGraminePF || m.PFPath != "enc" || m.WriteKey != m.Key {
		t.Fatalf("parsed %+v", m)
	}
	for _, c := range []struct{ mount, field string }{
		{`{"target": "/d", "type": "sealed", "source": "e", "key": "file:k", "format": "sefs"}`, "mounts[0].format"},
		{`{"target": "/d", "type": "hostfs", "source": "e", "format": "gramine-pf"}`, "mounts[0].format"},
		{`{"target": "/d", "type": "sealed", "source": "e", "key": "file:k", "pf_path": "e"}`, "mounts[0].pf_path"},
		{`{"target": "/d", "type": "sealed", "source": "e", "key": "kms:k@x", "format": "gramine-pf"}`, "mounts[0].key"},
		{`{"target": "/d", "type": "sealed", "source": "e", "key": "file:k", "write_key": "file:j", "format": "gramine-pf"}`, "mounts[0].write_key"},
		{`{"target": "/d", "type": "sealed", "source": "e", "key": "file:k", "also_write_keys": ["file:j"], "format": "gramine-pf"}`, "mounts[0].write_key"},
	} {
		_, err := Parse(mountsConfig(c.mount))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%s: err %v, want an error naming %s", c.mount, err, c.field)
		}
	}
}

// TestFormatMeasured: the format and bound path are measured, and a mount
// without them keeps its measured form (format "veil" is the default).
func TestFormatMeasured(t *testing.T) {
	canon := func(mount string) []byte {
		c, err := Parse(mountsConfig(mount))
		if err != nil {
			t.Fatal(err)
		}
		b, err := Canonical(c.Measured())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	plain := canon(`{"target": "/d", "type": "sealed", "source": "e", "key": "file:k"}`)
	if strings.Contains(string(plain), "format") {
		t.Fatalf("a mount without format measures a format field: %s", plain)
	}
	if !bytes.Equal(plain, canon(`{"target": "/d", "type": "sealed", "source": "e", "key": "file:k", "format": "veil"}`)) {
		t.Fatal(`format "veil" measures differently from no format`)
	}
	a := canon(`{"target": "/d", "type": "sealed", "source": "e", "key": "file:k", "format": "gramine-pf", "pf_path": "enc"}`)
	b := canon(`{"target": "/d", "type": "sealed", "source": "e", "key": "file:k", "format": "gramine-pf", "pf_path": "other"}`)
	if bytes.Equal(a, plain) || bytes.Equal(a, b) {
		t.Fatal("format and pf_path do not change the measured form")
	}
}
