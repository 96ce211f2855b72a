// Package userdir locates veil's per-user data directory, which holds the
// development signing key, the sim platform's attestation key and client
// profiles. It is created with mode 0700.
package userdir

import (
	"fmt"
	"os"
	"path/filepath"
)

// Dir returns the per-user data directory: $VEIL_HOME if set, else
// $XDG_DATA_HOME/veil, else ~/.local/share/veil. It does not create it.
func Dir() (string, error) {
	if d := os.Getenv("VEIL_HOME"); d != "" {
		return filepath.Abs(d)
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "veil"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("locating the veil data directory: %w (set VEIL_HOME)", err)
	}
	return filepath.Join(home, ".local", "share", "veil"), nil
}

// Ensure returns Dir joined with elem, creating the directories (mode 0700).
func Ensure(elem ...string) (string, error) {
	d, err := Dir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(append([]string{d}, elem...)...)
	if err := os.MkdirAll(p, 0o700); err != nil {
		return "", fmt.Errorf("creating %s: %w", p, err)
	}
	return p, nil
}
