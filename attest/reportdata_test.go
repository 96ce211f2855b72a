package attest

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// TestReportDataLayout pins the layout of docs/formats/report-data.md and
// checks that workload report data never passes as the runtime's.
func TestReportDataLayout(t *testing.T) {
	var inst [InstanceSize]byte
	for i := range inst {
		inst[i] = byte(i)
	}
	binding := sha256.Sum256([]byte("claims"))
	rd := RuntimeReportData(inst, binding)
	want := sha256.Sum256(append(append(append([]byte(RuntimeLabel), 0), inst[:]...), binding[:]...))
	if string(rd[:32]) != string(binding[:]) || string(rd[32:]) != string(want[:]) {
		t.Fatalf("runtime report data %x", rd)
	}
	if err := CheckRuntimeReportData(rd[:], inst[:]); err != nil {
		t.Fatal(err)
	}
	other := inst
	other[0] ^= 1
	if err := CheckRuntimeReportData(rd[:], other[:]); !errors.Is(err, ErrBinding) {
		t.Fatalf("another instance: %v", err)
	}
	// A workload that asks for exactly the runtime's bytes gets them
	// hashed under its own label.
	w := WorkloadReportData(inst, rd)
	ww := sha512.Sum512(append(append(append([]byte(WorkloadLabel), 0), inst[:]...), rd[:]...))
	if string(w[:]) != string(ww[:]) {
		t.Fatalf("workload report data %x", w)
	}
	if err := CheckRuntimeReportData(w[:], inst[:]); !errors.Is(err, ErrBinding) {
		t.Fatalf("workload report data passes as the runtime's: %v", err)
	}
	// The vector of the format document.
	if got := hex.EncodeToString(rd[32:]); got != "707d5b4ce52cafcba8c97d48632624d0bde79298aef4f95606ab6bb0c2a59c02" {
		t.Fatalf("runtime tag for instance 00..1f and binding SHA-256(\"claims\"): %s", got)
	}
}

// TestInstanceMeasurementsPolicy: the field parses strictly and names
// itself when wrong.
func TestInstanceMeasurementsPolicy(t *testing.T) {
	p, err := ParsePolicy(strings.NewReader(`{"instance_measurements": ["` + strings.Repeat("ab", 32) + `"]}`))
	if err != nil || len(p.InstanceMeasurements) != 1 {
		t.Fatalf("%v %+v", err, p)
	}
	var pe *PolicyError
	if _, err := ParsePolicy(strings.NewReader(`{"instance_measurements": ["abcd"]}`)); !errors.As(err, &pe) || pe.Field != "instance_measurements[0]" {
		t.Fatalf("short instance measurement: %v", err)
	}
	// Claims without an instance (not runtime evidence) never match.
	if ok, un := p.Evaluate(&Claims{TEE: TEETDX, TCBStatus: TCBUpToDate}); ok || un[0].Field != "instance_measurements" {
		t.Fatalf("claims without an instance: %v %v", ok, un)
	}
}
