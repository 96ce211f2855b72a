// Command veil runs unmodified programs inside a trusted execution
// environment, with their data sealed outside it and their keys released
// only after remote attestation. See README.md.
package main

import (
	"os"

	"github.com/veil-tee/veil/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
