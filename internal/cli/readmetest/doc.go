// Package readmetest runs the console sessions of README.md, docs/kms.md
// and docs/runtime.md, literally, with the built veil binary on PATH, so
// the documents and the behaviour cannot drift apart. It holds tests only.
package readmetest
