// Package pf reads and writes Gramine's protected files (header magic
// GRAFS_PF, format version 2, the format of Gramine's encrypted mounts and of
// gramine-sgx-pf-crypt), so that data encrypted for a Gramine workload opens
// in veil unchanged, and veil can hand files back to Gramine.
//
// What it protects against: a host that reads, modifies, truncates, extends,
// reorders or moves protected files. Every node is authenticated (AES-128-GCM
// under a per-node key kept in its parent; the root's key in the metadata
// node, which is sealed under a key derived from the 16-byte wrap key) before
// any of its bytes are used, and the path a file is bound to is checked when
// it is opened. Unlike Gramine, the reader also refuses a file whose physical
// size does not match the size the metadata records, and header bytes Gramine
// leaves unauthenticated (minor version, flags, padding) unless they hold the
// values Gramine writes.
//
// What it does not protect against: rolling a file back to an older version
// written under the same key and path (the format has no freshness), and
// anything a holder of the wrap key does. Gramine's crash-recovery files are
// not supported: a file flagged as having a pending write is refused.
//
// The format is described in docs/formats/gramine-pf.md.
package pf
