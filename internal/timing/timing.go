// Package timing prints where veil's start-up time goes when the
// environment variable VEIL_TIMING is set: one line per step on stderr,
// with the time since the process started its Go code.
package timing

import (
	"fmt"
	"os"
	"time"
)

var (
	start   = time.Now()
	enabled = os.Getenv("VEIL_TIMING") != ""
)

// Enabled reports whether timings are printed.
func Enabled() bool { return enabled }

// Enable turns printing on (for a process that got the setting other than
// through its environment, such as the sandbox's init).
func Enable() { enabled = true }

// Mark prints the time since start, with who and what happened.
func Mark(who, what string) {
	if enabled {
		fmt.Fprintf(os.Stderr, "veil: timing: %-6s %7.2f ms %s\n", who, float64(time.Since(start).Microseconds())/1000, what)
	}
}
