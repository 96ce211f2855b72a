// Package instance runs a built instance: it checks the build's signature
// and measurement, attests to the instance's key services over RA-TLS and
// fetches what their policies release (init-RA), mounts the verified image
// as the root file system and the sealed, hostfs and tmpfs mounts of
// veil.json, and starts programs in a sandbox (package instance/sandbox).
//
// What it protects against: a host that changes the image (every block is
// verified before a program sees it), swaps or tampers with sealed data
// (package seal), or runs a modified instance to obtain keys (the key
// service releases them only to the attested measurement). What it does
// not: with the sim backend the host is part of the trusted computing base
// and can read everything; hostfs mounts are untrusted by definition; file
// names, sizes and access patterns in sealed mounts are visible to the host.
package instance
