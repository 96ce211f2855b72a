package attest

// This file is the only place that lays out veil's report data
// (docs/formats/report-data.md): the 64 bytes a TEE binds into evidence are
// domain-separated, so that evidence the runtime asks for (to obtain keys)
// can never be produced through the attestation files a workload uses.

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"fmt"
)

// Labels of the two kinds of report data.
const (
	// RuntimeLabel prefixes the runtime's own report data: its RA-TLS key
	// and the instance measurement.
	RuntimeLabel = "veil/report-data/runtime/v1"
	// WorkloadLabel prefixes report data a workload asks for through
	// /dev/attestation, together with its instance measurement.
	WorkloadLabel = "veil/report-data/workload/v1"
)

// InstanceSize is the size of a veil instance measurement.
const InstanceSize = 32

// RuntimeReportData is the report data of the runtime's own evidence:
// bytes 0-31 are binding (the SHA-256 of the RA-TLS claims, in the place
// RA-TLS verifiers look for it), bytes 32-63 are
// SHA-256(RuntimeLabel · 0x00 · instance · binding).
func RuntimeReportData(instance [InstanceSize]byte, binding [32]byte) ReportData {
	var rd ReportData
	copy(rd[:32], binding[:])
	tag := runtimeTag(instance[:], binding[:])
	copy(rd[32:], tag[:])
	return rd
}

func runtimeTag(instance, binding []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(RuntimeLabel))
	h.Write([]byte{0})
	h.Write(instance)
	h.Write(binding)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// CheckRuntimeReportData checks that rd is the runtime's report data for
// instance: that bytes 32-63 are the runtime tag over instance and bytes
// 0-31. It matches ErrBinding when they are not (for example evidence that
// a workload asked for through /dev/attestation).
func CheckRuntimeReportData(rd []byte, instance []byte) error {
	if len(rd) != ReportDataSize || len(instance) != InstanceSize {
		return fmt.Errorf("report data of %d bytes or instance measurement of %d bytes: %w", len(rd), len(instance), ErrBinding)
	}
	tag := runtimeTag(instance, rd[:32])
	if subtle.ConstantTimeCompare(tag[:], rd[32:]) != 1 {
		return fmt.Errorf("report data is not the runtime's for instance %x (evidence a workload asked for, or another instance's): %w", instance, ErrBinding)
	}
	return nil
}

// WorkloadReportData is the report data of evidence a workload asks for
// with user data of its choice: SHA-512(WorkloadLabel · 0x00 · instance ·
// user). A relying party of the workload recomputes it from the user data
// it expects and the instance measurement it trusts.
func WorkloadReportData(instance [InstanceSize]byte, user ReportData) ReportData {
	h := sha512.New()
	h.Write([]byte(WorkloadLabel))
	h.Write([]byte{0})
	h.Write(instance[:])
	h.Write(user[:])
	var rd ReportData
	h.Sum(rd[:0])
	return rd
}

// WorkloadIssuer issues evidence for a workload: every report data it is
// given is bound under WorkloadLabel together with Instance, the
// measurement of the instance the workload runs in, so what it issues can
// never pass as the runtime's evidence (RuntimeReportData).
type WorkloadIssuer struct {
	Issuer   Issuer
	Instance [InstanceSize]byte
}

// TEE is the TEE type of the underlying issuer.
func (w *WorkloadIssuer) TEE() TEE { return w.Issuer.TEE() }

// Issue issues evidence over WorkloadReportData(Instance, user).
func (w *WorkloadIssuer) Issue(ctx context.Context, user ReportData) (*Evidence, error) {
	return w.Issuer.Issue(ctx, WorkloadReportData(w.Instance, user))
}
