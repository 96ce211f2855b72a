package tsm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

	"github.com/veil-tee/veil/attest"
)

// fake returns a configfs-tsm fake whose provider is provider and whose
// outblob is produced by out from the written inblob.
func fake(provider string, out func(inblob []byte) []byte) *faketsm.Client {
	sub := faketsm.ReportV7(0)
	base := sub.ReadAttr
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(provider + "\n"), nil
		case "outblob":
			return out(e.InAttrs["inblob"].Value), nil
		}
		return base(e, attr)
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}
}

func TestIssueTDX(t *testing.T) {
	quote, err := os.ReadFile("../testdata/tdx/quote_v4_tdx_ecdsa_p256.bin")
	if err != nil {
		t.Fatal(err)
	}
	var seen []byte
	c := fake("tdx_guest", func(in []byte) []byte { seen = bytes.Clone(in); return quote })
	var rd attest.ReportData
	copy(rd[:], "bind me")
	ev, err := NewIssuer(c, attest.TEETDX).Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if ev.TEE != attest.TEETDX || !bytes.Equal(ev.Quote, quote) || !bytes.Equal(seen, rd[:]) {
		t.Fatalf("evidence %s, inblob %q", ev.TEE, seen)
	}
	if tee, _ := attest.Detect(ev.Quote); tee != attest.TEETDX {
		t.Fatalf("detected %s", tee)
	}
	ev, err = NewIssuer(c, attest.TEESNP).Issue(context.Background(), rd)
	if !errors.Is(err, attest.ErrUnsupported) {
		t.Fatalf("TDX provider accepted for SNP: %v %v", ev, err)
	}
}

func TestIssueSNPWithAux(t *testing.T) {
	report := make([]byte, 0x4a0)
	report[0] = 2
	c := fake("sev_guest", func([]byte) []byte { return report })
	ev, err := NewIssuer(c, "").Issue(context.Background(), attest.ReportData{})
	if err != nil {
		t.Fatal(err)
	}
	if ev.TEE != attest.TEESNP || string(ev.Aux) != "auxblob" {
		t.Fatalf("%s aux %q", ev.TEE, ev.Aux)
	}
}

func TestUnknownProvider(t *testing.T) {
	// The library's stock fake answers as provider "fake".
	c := &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": faketsm.ReportV7(0)}}
	if _, err := NewIssuer(c, "").Issue(context.Background(), attest.ReportData{}); !errors.Is(err, attest.ErrUnsupported) {
		t.Fatalf("got %v", err)
	}
}
