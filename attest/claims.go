package attest

import (
	"encoding/json"
	"fmt"
	"time"
)

// TCBStatus is the platform's security level as rated by the TEE vendor's
// collateral (Intel's TCB info statuses).
type TCBStatus string

// TCB statuses from Intel's TCB info; TCBNotApplicable is used for sim and
// for backends without such a rating.
const (
	TCBUpToDate                          TCBStatus = "UpToDate"
	TCBSWHardeningNeeded                 TCBStatus = "SWHardeningNeeded"
	TCBConfigurationNeeded               TCBStatus = "ConfigurationNeeded"
	TCBConfigurationAndSWHardeningNeeded TCBStatus = "ConfigurationAndSWHardeningNeeded"
	TCBOutOfDate                         TCBStatus = "OutOfDate"
	TCBOutOfDateConfigurationNeeded      TCBStatus = "OutOfDateConfigurationNeeded"
	TCBRevoked                           TCBStatus = "Revoked"
	TCBNotApplicable                     TCBStatus = "NotApplicable"
)

var knownTCB = map[TCBStatus]bool{
	TCBUpToDate: true, TCBSWHardeningNeeded: true, TCBConfigurationNeeded: true,
	TCBConfigurationAndSWHardeningNeeded: true, TCBOutOfDate: true,
	TCBOutOfDateConfigurationNeeded: true, TCBRevoked: true, TCBNotApplicable: true,
}

// ParseTCBStatus parses a status name exactly as Intel spells it.
func ParseTCBStatus(s string) (TCBStatus, error) {
	if knownTCB[TCBStatus(s)] {
		return TCBStatus(s), nil
	}
	return "", fmt.Errorf("unknown TCB status %q", s)
}

// UnmarshalJSON accepts only known statuses.
func (s *TCBStatus) UnmarshalJSON(b []byte) error {
	var v string
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	t, err := ParseTCBStatus(v)
	if err != nil {
		return err
	}
	*s = t
	return nil
}

// Claims are what verified evidence proves. Byte fields print as hex.
type Claims struct {
	TEE TEE `json:"tee"`
	// Measurement is the workload's code identity: SGX MRENCLAVE, the sim
	// measurement, TDX MRTD, SNP MEASUREMENT.
	Measurement Hex `json:"measurement"`
	// Signer is the hash of the key that signed the workload (SGX MRSIGNER,
	// sim signer); empty for TDX and SNP.
	Signer      Hex        `json:"signer,omitempty"`
	ProductID   uint16     `json:"product_id"`
	SVN         uint16     `json:"svn"`
	Debug       bool       `json:"debug"`
	ReportData  Hex        `json:"report_data"`
	TCBStatus   TCBStatus  `json:"tcb_status"`
	AdvisoryIDs []string   `json:"advisory_ids,omitempty"`
	Platform    Platform   `json:"platform"`
	TDX         *TDXClaims `json:"tdx,omitempty"`
	SNP         *SNPClaims `json:"snp,omitempty"`
	// Instance is the veil instance measurement the runtime bound into the
	// report data (RuntimeReportData), set by RA-TLS verification when the
	// certificate carries it; empty otherwise. In a confidential VM it is
	// the only evidence of which instance asks: the TEE measures the VM.
	Instance Hex `json:"instance,omitempty"`
	// IssuedAt is when the evidence was produced, when the evidence carries
	// a trustworthy time (sim quotes, RA-TLS certificates); zero otherwise.
	IssuedAt time.Time `json:"issued_at,omitzero"`
}

// Platform identifies the machine, as far as the evidence says.
type Platform struct {
	FMSPC      string `json:"fmspc,omitempty"`
	PCEID      string `json:"pce_id,omitempty"`
	QESVN      uint16 `json:"qe_svn,omitempty"`
	PCESVN     uint16 `json:"pce_svn,omitempty"`
	CPUSVN     Hex    `json:"cpu_svn,omitempty"`
	ChipID     Hex    `json:"chip_id,omitempty"`
	PlatformID string `json:"platform_id,omitempty"` // sim: platform certificate serial
}

// TDXClaims are the TD-specific measurements.
type TDXClaims struct {
	MRTD         Hex    `json:"mrtd"`
	RTMR         [4]Hex `json:"rtmr"`
	MRConfigID   Hex    `json:"mr_config_id"`
	MROwner      Hex    `json:"mr_owner"`
	MROwnerCfg   Hex    `json:"mr_owner_config"`
	MRSeam       Hex    `json:"mr_seam"`
	TDAttributes Hex    `json:"td_attributes"`
	XFAM         Hex    `json:"xfam"`
	TEETCBSVN    Hex    `json:"tee_tcb_svn"`
}

// SNPClaims are the SEV-SNP-specific fields. TCB values are the reports'
// 64-bit TCB_VERSION (see SNPTCB for their parts).
type SNPClaims struct {
	Measurement  Hex    `json:"measurement"`
	Policy       uint64 `json:"policy"`
	VMPL         uint32 `json:"vmpl"`
	GuestSVN     uint32 `json:"guest_svn"`
	HostData     Hex    `json:"host_data"`
	FamilyID     Hex    `json:"family_id"`
	ImageID      Hex    `json:"image_id"`
	ReportedTCB  uint64 `json:"reported_tcb"`
	LaunchTCB    uint64 `json:"launch_tcb"`
	CommittedTCB uint64 `json:"committed_tcb"`
	CurrentTCB   uint64 `json:"current_tcb"`
	// RevocationChecked: the VCEK and ASK were checked against AMD's CRL
	// (snp.Options.CheckRevocations) and are not revoked.
	RevocationChecked bool `json:"revocation_checked,omitempty"`
}

// SNPTCB are the security patch levels of an SEV-SNP TCB_VERSION, as
// go-sev-guest decomposes it (kds.TCBParts): boot loader (byte 0), PSP OS
// (byte 1), SNP firmware (byte 6) and CPU microcode (byte 7).
type SNPTCB struct {
	BootLoader uint8 `json:"bl_spl"`
	TEE        uint8 `json:"tee_spl"`
	SNP        uint8 `json:"snp_spl"`
	Microcode  uint8 `json:"ucode_spl"`
}

// DecomposeSNPTCB splits a TCB_VERSION into its parts.
func DecomposeSNPTCB(v uint64) SNPTCB {
	return SNPTCB{BootLoader: uint8(v), TEE: uint8(v >> 8), SNP: uint8(v >> 48), Microcode: uint8(v >> 56)}
}

// AtLeast reports whether every part of t is at least the part of min.
func (t SNPTCB) AtLeast(min SNPTCB) bool {
	return t.BootLoader >= min.BootLoader && t.TEE >= min.TEE && t.SNP >= min.SNP && t.Microcode >= min.Microcode
}
