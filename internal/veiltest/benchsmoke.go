package veiltest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RunBenchmarksOnce runs the benchmarks of the current test binary that
// match pattern once each (-test.benchtime=1x), in a child process of the
// same binary, and fails t if any of them fails or none ran: it keeps
// benchmarks compiling and working in `make test` without timing
// anything. Skipped under -short.
func RunBenchmarksOnce(t *testing.T, pattern string) {
	t.Helper()
	if testing.Short() {
		t.Skip("benchmark smoke run skipped in -short mode")
	}
	if os.Getenv("VEIL_BENCH_SMOKE_CHILD") != "" {
		return // the child runs benchmarks only
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench="+pattern, "-test.benchtime=1x", "-test.count=1")
	cmd.Env = append(os.Environ(), "VEIL_BENCH_SMOKE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("benchmarks %s: %v\n%s", pattern, err, out)
	}
	if !strings.Contains(string(out), "Benchmark") {
		t.Fatalf("benchmarks %s: none ran:\n%s", pattern, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Benchmark") || strings.Contains(l, "SKIP") {
			t.Log(l)
		}
	}
}
