// Package attesttest holds black-box tests of the attestation verbs: they
// build the veil binary and run it as a user would.
package attesttest
