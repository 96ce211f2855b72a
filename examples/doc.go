// Package examples holds no code: each directory below it is a workload run
// end to end by its run.sh (data owner, developer, operator, workload), and
// examples_test.go runs every one of them on small data and checks the
// decrypted results against the same program run on plaintext.
//
// The examples use development key services and the sim attestation
// backend: they show the flow and check veil's behaviour, not a secure
// deployment (the host can read everything under sim).
package examples
