package cli

import (
	"log/slog"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/fusefs"
	"github.com/veil-tee/veil/instance"
	"github.com/veil-tee/veil/instance/sandbox"
	"github.com/veil-tee/veil/trustimage"
)

// The runtime's file systems are the FUSE servers of package fusefs. Run
// by root, the sandbox's programs are an unprivileged host uid
// (sandbox.HostIDs): the mounts let them in (allow_other) and the image
// shows its files as owned by the sandbox's root.

func mountImage(mountpoint string, r *trustimage.Reader, log *slog.Logger) (instance.Unmounter, error) {
	o := fusefs.ImageOptions{Reader: r, Logger: log}
	if ids := sandbox.HostIDs(); ids != nil {
		o.AllowOther, o.UIDShift, o.GIDShift = true, ids.UID, ids.GID
	}
	srv, err := fusefs.MountImage(mountpoint, o)
	if err != nil {
		return nil, err
	}
	return imageMount{fuseMount{srv, mountpoint}, r}, nil
}

// fuseMount is a mount of package fusefs.
type fuseMount struct {
	srv        *fuse.Server
	mountpoint string
}

func (m fuseMount) Unmount() error { return fusefs.Unmount(m.srv, m.mountpoint) }

// imageMount closes the image when it is unmounted.
type imageMount struct {
	fuseMount
	r *trustimage.Reader
}

func (m imageMount) Unmount() error {
	err := m.fuseMount.Unmount()
	if cerr := m.r.Close(); err == nil {
		err = cerr
	}
	return err
}

func mountSealed(mountpoint string, o instance.SealedMount, log *slog.Logger) (instance.Unmounter, error) {
	if g := o.GraminePF; g != nil {
		srv, err := fusefs.MountGraminePF(mountpoint, fusefs.GraminePFOptions{Source: o.Source, Key: g.Key, PFPath: g.PFPath, ReadOnly: o.ReadOnly, Logger: log, AllowOther: sandbox.HostIDs() != nil})
		if err != nil {
			return nil, err
		}
		return fuseMount{srv, mountpoint}, nil
	}
	srv, err := fusefs.MountSealed(mountpoint, fusefs.SealedOptions{Source: o.Source, Keys: o.Keys, WriteKeys: o.WriteKeys, ReadOnly: o.ReadOnly, MountID: o.MountID, Logger: log, AllowOther: sandbox.HostIDs() != nil})
	if err != nil {
		return nil, err
	}
	return fuseMount{srv, mountpoint}, nil
}

func mountAttestation(mountpoint string, iss *attest.WorkloadIssuer, log *slog.Logger) (instance.Unmounter, error) {
	srv, err := fusefs.MountAttestation(mountpoint, fusefs.AttestationOptions{Issuer: iss, Logger: log, AllowOther: sandbox.HostIDs() != nil})
	if err != nil {
		return nil, err
	}
	return fuseMount{srv, mountpoint}, nil
}
