package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Output in the form `go test -bench` prints it, three samples of some
// benchmarks and none of others.
const goOutput = `goos: linux
goarch: amd64
pkg: github.com/veil-tee/veil/seal
BenchmarkSealVsRaw-2   	      10	  14000000 ns/op	         0.9700 of-raw	      4800 MB/s-sealed
BenchmarkSealVsRaw-2   	      10	  14000000 ns/op	         0.8800 of-raw	      4800 MB/s-sealed
BenchmarkSealVsRaw-2   	      10	  14000000 ns/op	         0.9450 of-raw	      4800 MB/s-sealed
pkg: github.com/veil-tee/veil/fusefs
BenchmarkMount/SeqRead/disk-2         	       5	  60000000 ns/op	4000.00 MB/s
BenchmarkMount/SeqRead/disk-2         	       5	  60000000 ns/op	3000.00 MB/s
BenchmarkMount/SeqRead/veil-sealed-2  	       5	  80000000 ns/op	3000.00 MB/s
BenchmarkMount/SeqRead/veil-sealed-2  	       5	  80000000 ns/op	2700.00 MB/s
BenchmarkMount/RandWrite4K/disk-2     	   10000	     30000 ns/op	 130.00 MB/s	 120.0 MB/s-to-close
BenchmarkMount/RandWrite4K/veil-sealed-2	   10000	     80000 ns/op	  50.00 MB/s	  49.0 MB/s-to-close
pkg: github.com/veil-tee/veil/trustimage
BenchmarkBuildPandas-2   	       1	1600000000 ns/op
BenchmarkSHA256Pandas-2  	       3	 480000000 ns/op
`

func TestSummaryFromGoOutputAndRows(t *testing.T) {
	dir := t.TempDir()
	goFile := filepath.Join(dir, "bench.txt")
	rowsFile := filepath.Join(dir, "rows.tsv")
	os.WriteFile(goFile, []byte(goOutput), 0o644)
	os.WriteFile(rowsFile, []byte("veil run start-up, no key service\t69 ms\tnative exec 5 ms\t64\t<15\tms\n"+
		"people query, 1 M rows\t1.40 s\tplain 1.00 s\t1.40\t<=1.5\tx\n"), 0o644)
	var out strings.Builder
	if err := run([]string{"-go", goFile, "-rows", rowsFile}, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		// The median of 0.97, 0.88, 0.945.
		"| seal a stream (seal.Writer, 2 cores) | 0.94× the limit (SealVsRaw, median of 3) | raw AES-256-GCM on both cores, same iteration | 0.94× | ≥ 0.9× | met |",
		// Medians 2850 / 3500 MB/s.
		"| sealed mount, sequential read | 2850 MB/s | 3500 MB/s | 0.81× | ≥ 0.8× | met |",
		"| sealed mount, random 4 KiB write | 50 MB/s | 130 MB/s | 0.38× | ≥ 0.5× | **not met** |",
		"| image build (python3 + pandas) / SHA-256 of its inputs | 1.60 s | 0.48 s | 0.30× | ≥ 0.7× | **not met** |",
		// Absent from the input: never met.
		"| open a stream (seal.Reader, 2 cores) | – | raw AES-256-GCM on both cores, same iteration | – | ≥ 0.9× | not measured |",
		"| image mount, first read of every file | – | – | – | ≥ 0.5× | not measured |",
		"| veil run start-up, no key service | 69 ms | native exec 5 ms | 64 ms | < 15 ms | **not met** |",
		"| people query, 1 M rows | 1.40 s | plain 1.00 s | 1.40× | ≤ 1.5× | met |",
		"3 of 11 targets met in this run.",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("summary lacks the line\n%s\ngot:\n%s", want, got)
		}
	}
}

func TestSummaryRefusesBadRows(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ rows, want string }{
		{"a\tb\tc\t1\t>=1\n", "5 fields, want 6"},
		{"a\tb\tc\tfast\t>=1\tx\n", `value "fast" is not a number`},
		{"a\tb\tc\t1\tabout 1\tx\n", `target "about 1"`},
	} {
		p := filepath.Join(dir, "rows.tsv")
		os.WriteFile(p, []byte(c.rows), 0o644)
		err := run([]string{"-rows", p}, &strings.Builder{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("rows %q: error %v, want one containing %q", c.rows, err, c.want)
		}
	}
	if err := run(nil, &strings.Builder{}); err == nil || !strings.Contains(err.Error(), "nothing to summarise") {
		t.Errorf("no input: error %v", err)
	}
}
