// Package ociimage ships a built veil instance as an OCI image and checks
// such an image before anything in it runs.
//
// An image holds two layers on top of an optional base image: the static
// veil binary (/usr/local/bin/veil) and the instance's build (/instance:
// veil.json and build/, which hold the signed record and the hash-tree
// protected image). Its entrypoint is `veil run -C /instance`. The
// measurement, signer and veil version are manifest annotations and config
// labels. Images are reproducible: layers are written with sorted entries,
// time zero (or SOURCE_DATE_EPOCH), owner root and fixed modes, so the
// same instance and binary give the same image digest. The archive is an
// OCI image layout in a tar file, with a Docker manifest.json beside it, so
// `docker load`, `podman load` and `skopeo copy oci-archive:` accept it.
//
// What it protects against: Unpack refuses an archive whose manifest,
// config or layers do not match their digests, whose layers hold anything
// but veil's files, whose build record's signature fails, whose measurement
// or signer differ from the annotations (or from the one the caller
// expects), or whose image blocks fail the hash tree.
//
// What it does not protect against: a registry or host that replaces the
// whole image by another consistently built one (the measurement differs:
// the key service's policy names the one it trusts, and Unpack checks an
// expected measurement when given one); the veil binary itself is checked
// only against the digest in the same manifest, so its trust comes from
// where the image came from (a signed image, or a measured guest image in
// confidential containers). A base image's layers are checked against
// their digests but not extracted or judged.
package ociimage

import (
	"errors"
)

// Annotation and label keys. The standard org.opencontainers.image.* keys
// are used where they fit; veil's own keys carry the instance's identity.
const (
	KeyMeasurement = "io.github.veil-tee.measurement" // hex SHA-256 of the instance (mrenclave)
	KeySigner      = "io.github.veil-tee.signer"      // hex hash of the signing key (mrsigner)
	KeyVersion     = "io.github.veil-tee.version"     // version of the packaged veil binary
	KeyVeilSHA256  = "io.github.veil-tee.veil.sha256" // hex SHA-256 of the veil binary
	KeyProductID   = "io.github.veil-tee.product-id"
	KeySVN         = "io.github.veil-tee.svn"
	KeyDebuggable  = "io.github.veil-tee.debuggable"

	keyTitle       = "org.opencontainers.image.title"
	keyDescription = "org.opencontainers.image.description"
	keyCreated     = "org.opencontainers.image.created"
	keyVersion     = "org.opencontainers.image.version"
	keyBaseDigest  = "org.opencontainers.image.base.digest"
	keyRefName     = "org.opencontainers.image.ref.name"
	keyImageName   = "io.containerd.image.name"
)

// Paths inside the image.
const (
	VeilPath     = "/usr/local/bin/veil"
	InstancePath = "/instance"
)

// Errors.
var (
	// ErrTampered: a blob does not match its digest, a layer holds files
	// veil does not put there, or the build fails its signature or hash tree.
	ErrTampered = errors.New("image does not match its digests")
	// ErrMismatch: the instance's measurement or signer differs from the
	// image's annotations or from the expected measurement.
	ErrMismatch = errors.New("measurement does not match")
	// ErrNotPackage: the archive is not an image written by veil package.
	ErrNotPackage = errors.New("not a veil package")
	// ErrBadBinary: the veil binary cannot be shipped (not a static Linux ELF).
	ErrBadBinary = errors.New("veil binary cannot be packaged")
)
