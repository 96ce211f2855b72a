package fusefs

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/veil-tee/veil/attest"
)

// AttestationOptions configure the /dev/attestation file system.
type AttestationOptions struct {
	// Issuer produces evidence for the workload. It must be an
	// *attest.WorkloadIssuer: every quote binds the workload's report data
	// under the workload label together with the instance measurement, so
	// a workload can never produce the runtime's evidence (the key service
	// refuses it) nor evidence for another instance.
	Issuer *attest.WorkloadIssuer
	Logger *slog.Logger
	// AllowOther lets users other than the mounting one use the mount.
	AllowOther bool
}

// MountAttestation serves Gramine-compatible pseudo-files at mountpoint,
// for programs that want evidence themselves:
//
//	attestation_type  read: the TEE type ("sim", "sgx", "tdx", "snp")
//	user_report_data  write: 64 bytes of report data; read: them back
//	quote             read: evidence binding the last report data written
//
// The report data is shared by the whole sandbox, as in Gramine. Unlike
// Gramine, the quote does not bind the 64 bytes written as they are but
// attest.WorkloadReportData(instance, them) (docs/formats/report-data.md).
func MountAttestation(mountpoint string, o AttestationOptions) (*fuse.Server, error) {
	if o.Issuer == nil || o.Issuer.Issuer == nil {
		return nil, errors.New("mounting the attestation files: no workload issuer")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	st := &attState{o: o}
	sec := time.Second
	srv, err := fs.Mount(mountpoint, &attRoot{st: st}, &fs.Options{
		MountOptions: fuse.MountOptions{FsName: "veil-attestation", Name: "veil", AllowOther: o.AllowOther},
		AttrTimeout:  &sec, EntryTimeout: &sec,
	})
	if err != nil {
		return nil, mountError(err)
	}
	return srv, nil
}

type attState struct {
	o  AttestationOptions
	mu sync.Mutex
	rd attest.ReportData
}

type attRoot struct {
	fs.Inode
	st *attState
}

var _ fs.NodeOnAdder = (*attRoot)(nil)

func (r *attRoot) OnAdd(ctx context.Context) {
	for name, kind := range map[string]int{"attestation_type": attType, "user_report_data": attReportData, "quote": attQuote} {
		mode := uint32(0o444)
		if kind == attReportData {
			mode = 0o666
		}
		ch := r.NewPersistentInode(ctx, &attFile{st: r.st, kind: kind, mode: mode}, fs.StableAttr{Mode: syscall.S_IFREG})
		r.AddChild(name, ch, false)
	}
}

const (
	attType = iota
	attReportData
	attQuote
)

type attFile struct {
	fs.Inode
	st   *attState
	kind int
	mode uint32
}

var (
	_ fs.NodeOpener    = (*attFile)(nil)
	_ fs.NodeGetattrer = (*attFile)(nil)
	_ fs.NodeSetattrer = (*attFile)(nil)
)

func (f *attFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | f.mode
	switch f.kind {
	case attReportData:
		out.Size = attest.ReportDataSize
	case attType:
		out.Size = uint64(len(f.st.o.Issuer.TEE()))
	}
	return 0
}

// Setattr accepts the truncation that opening for writing implies.
func (f *attFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if f.kind != attReportData {
		return syscall.EACCES
	}
	return f.Getattr(ctx, fh, out)
}

func (f *attFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	writing := flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0
	if writing && f.kind != attReportData {
		return nil, 0, syscall.EACCES
	}
	h := &attHandle{f: f}
	if f.kind == attQuote {
		// The quote is made at open, for the report data written before.
		f.st.mu.Lock()
		rd := f.st.rd
		f.st.mu.Unlock()
		ev, err := f.st.o.Issuer.Issue(ctx, rd)
		if err != nil {
			f.st.o.Logger.Error("issuing evidence for /dev/attestation/quote", "err", err)
			return nil, 0, syscall.EIO
		}
		h.data = ev.Quote
	}
	return h, fuse.FOPEN_DIRECT_IO, 0
}

type attHandle struct {
	f    *attFile
	data []byte
}

var (
	_ fs.FileReader = (*attHandle)(nil)
	_ fs.FileWriter = (*attHandle)(nil)
)

func (h *attHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	var b []byte
	switch h.f.kind {
	case attType:
		b = []byte(h.f.st.o.Issuer.TEE())
	case attReportData:
		h.f.st.mu.Lock()
		rd := h.f.st.rd
		h.f.st.mu.Unlock()
		b = rd[:]
	case attQuote:
		b = h.data
	}
	if off >= int64(len(b)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(b[off:min(int64(len(b)), off+int64(len(dest)))]), 0
}

// Write takes exactly 64 bytes at offset 0, as Gramine does.
func (h *attHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if off != 0 || len(data) != attest.ReportDataSize {
		return 0, syscall.EINVAL
	}
	h.f.st.mu.Lock()
	copy(h.f.st.rd[:], data)
	h.f.st.mu.Unlock()
	return uint32(len(data)), 0
}
