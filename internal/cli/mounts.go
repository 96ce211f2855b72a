package cli

import (
	"log/slog"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/fusefs"
	"github.com/veil-tee/veil/instance"
	"github.com/veil-tee/veil/trustimage"
)

// The runtime's file systems are the FUSE servers of package fusefs.

func mountImage(mountpoint string, r *trustimage.Reader, log *slog.Logger) (instance.Unmounter, error) {
	srv, err := fusefs.MountImage(mountpoint, fusefs.ImageOptions{Reader: r, Logger: log})
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
		srv, err := fusefs.MountGraminePF(mountpoint, fusefs.GraminePFOptions{Source: o.Source, Key: g.Key, PFPath: g.PFPath, ReadOnly: o.ReadOnly, Logger: log})
		if err != nil {
			return nil, err
		}
		return fuseMount{srv, mountpoint}, nil
	}
	srv, err := fusefs.MountSealed(mountpoint, fusefs.SealedOptions{Source: o.Source, Keys: o.Keys, WriteKeys: o.WriteKeys, ReadOnly: o.ReadOnly, Logger: log})
	if err != nil {
		return nil, err
	}
	return fuseMount{srv, mountpoint}, nil
}

func mountAttestation(mountpoint string, iss attest.Issuer, log *slog.Logger) (instance.Unmounter, error) {
	srv, err := fusefs.MountAttestation(mountpoint, fusefs.AttestationOptions{Issuer: iss, Logger: log})
	if err != nil {
		return nil, err
	}
	return fuseMount{srv, mountpoint}, nil
}
