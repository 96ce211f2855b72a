package fusefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/sim"
)

func TestAttestationFiles(t *testing.T) {
	needFUSE(t)
	p, _, err := sim.Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id := sim.Identity{Measurement: [32]byte{1, 2, 3}}
	dir := t.TempDir()
	srv, err := MountAttestation(dir, AttestationOptions{Issuer: &attest.WorkloadIssuer{Issuer: p.Issuer(id), Instance: id.Measurement}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	if b, _ := os.ReadFile(filepath.Join(dir, "attestation_type")); string(b) != "sim" {
		t.Fatalf("attestation_type %q", b)
	}
	rd := bytes.Repeat([]byte{0xab}, 64)
	if err := os.WriteFile(filepath.Join(dir, "user_report_data"), rd, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "user_report_data"), rd[:10], 0); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("short report data: %v, want EINVAL", err)
	}
	quote, err := os.ReadFile(filepath.Join(dir, "quote"))
	if err != nil {
		t.Fatal(err)
	}
	claims, err := sim.NewVerifier(p.CA).Verify(context.Background(), &attest.Evidence{TEE: attest.TEESim, Quote: quote})
	if err != nil {
		t.Fatalf("the quote does not verify: %v", err)
	}
	var user attest.ReportData
	copy(user[:], rd)
	want := attest.WorkloadReportData(id.Measurement, user)
	if !bytes.Equal(claims.ReportData, want[:]) || claims.Measurement[0] != 1 {
		t.Fatalf("quote binds report data %x, measurement %x", claims.ReportData, claims.Measurement)
	}
	if err := os.WriteFile(filepath.Join(dir, "quote"), []byte("x"), 0); err == nil {
		t.Fatal("the quote is writable")
	}
}
