package bigdl_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/veil-tee/veil/bigdl"
	"github.com/veil-tee/veil/internal/bigdltest"
)

func writeFile(t *testing.T, dataKey, plain []byte, when time.Time) []byte {
	t.Helper()
	return bigdltest.Write(dataKey, plain, when)
}

func dataKey(t *testing.T) []byte {
	t.Helper()
	// BigDL's data keys are strings (base64 of the KMS data key).
	k := make([]byte, 32)
	rand.Read(k)
	return []byte(base64.StdEncoding.EncodeToString(k))
}

func decrypt(f, key []byte) ([]byte, bigdl.Header, error) {
	var out bytes.Buffer
	h, err := bigdl.Decrypt(bytes.NewReader(f), int64(len(f)), key, &out)
	return out.Bytes(), h, err
}

func TestRoundTripSizes(t *testing.T) {
	key := dataKey(t)
	when := time.Unix(1700000000, 0)
	for _, n := range []int{1, 15, 16, 17, 4096, 1<<20 + 5, 3 << 20} {
		plain := make([]byte, n)
		rand.Read(plain)
		got, h, err := decrypt(writeFile(t, key, plain, when), key)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(got, plain) || !h.Time.Equal(when) {
			t.Fatalf("%d bytes: wrong plaintext or time %v", n, h.Time)
		}
	}
}

func TestTamperedAndWrongKeyRefused(t *testing.T) {
	key := dataKey(t)
	plain := bytes.Repeat([]byte("id,name,salary\n1,ann,100\n"), 100)
	f := writeFile(t, key, plain, time.Now())
	for _, off := range []int{bigdl.HeaderSize, bigdl.HeaderSize + 100, len(f) - bigdl.MACSize - 20, len(f) - 1, 5 /* IV */, bigdl.HeaderSize - 1} {
		g := append([]byte{}, f...)
		g[off] ^= 0x01
		got, _, err := decrypt(g, key)
		if off < 9 && off > 0 {
			// The time stamp is not authenticated by the format.
			continue
		}
		if !errors.Is(err, bigdl.ErrAuth) || len(got) != 0 {
			t.Errorf("flip at %d: err %v, %d bytes released", off, err, len(got))
		}
	}
	other := append([]byte{}, key...)
	other[20] ^= 0x01 // AES key differs, MAC key the same
	if got, _, err := decrypt(f, other); !errors.Is(err, bigdl.ErrAuth) || len(got) != 0 {
		t.Errorf("wrong AES key: %v", err)
	}
	other = append([]byte{}, key...)
	other[3] ^= 0x01
	if got, _, err := decrypt(f, other); !errors.Is(err, bigdl.ErrAuth) || len(got) != 0 {
		t.Errorf("wrong MAC key: %v", err)
	}
	if _, _, err := decrypt(f[:len(f)-16], key); err == nil {
		t.Error("truncated file accepted")
	}
	if _, _, err := decrypt(f, key[:31]); !errors.Is(err, bigdl.ErrKey) {
		t.Errorf("short key: %v", err)
	}
	g := append([]byte{}, f...)
	g[0] = 0x81
	if _, _, err := decrypt(g, key); !errors.Is(err, bigdl.ErrFormat) {
		t.Errorf("bad version: %v", err)
	}
}

func FuzzDecrypt(f *testing.F) {
	key := []byte("0123456789abcdef0123456789abcdef")
	f.Add([]byte{})
	f.Add(make([]byte, bigdl.HeaderSize+16+bigdl.MACSize))
	f.Add(bigdltest.Write(key, []byte("id,name\n1,ann\n"), time.Unix(1700000000, 0)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		h, err := bigdl.Decrypt(bytes.NewReader(b), int64(len(b)), key, &out)
		if err != nil && out.Len() != 0 {
			t.Fatal("plaintext released on error")
		}
		if err == nil && !bytes.Equal(bigdltest.Write(key, out.Bytes(), h.Time), b) {
			t.Fatal("an accepted file is not the one its plaintext, key and time give")
		}
	})
}
