// Command benchsummary prints the summary table of `make bench`: for every
// speed target of docs/performance.md, what veil measured in this run, its
// limit measured in the same run, the ratio and whether the target is met.
//
//	go run ./scripts/benchsummary -go bench.txt -rows rows.tsv
//
// -go reads Go benchmark output (`go test -bench`, any -count): the
// figures are medians over the samples of each benchmark. -rows reads the
// rows the benchmark scripts write (scripts/benchlib.sh, summary_row), one
// per line, tab-separated: what, veil, limit, value, target (such as
// ">=0.8", "<=1.3", "<15") and unit ("x" for a ratio, "ms", "ops/s").
// A target whose figures are missing from the input (a benchmark that
// was skipped or failed) is listed as "not measured", never as met.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/perf/benchfmt"
)

// samples holds, per benchmark name (without "Benchmark" and without the
// GOMAXPROCS suffix) and unit, every sample read.
type samples map[string]map[string][]float64

func readGo(r io.Reader, name string) (samples, error) {
	s := samples{}
	br := benchfmt.NewReader(r, name)
	for br.Scan() {
		res, ok := br.Result().(*benchfmt.Result)
		if !ok {
			continue
		}
		base, parts := res.Name.Parts()
		n := string(base)
		for _, p := range parts {
			if !strings.HasPrefix(string(p), "-") {
				n += string(p)
			}
		}
		n = strings.TrimPrefix(n, "Benchmark")
		if s[n] == nil {
			s[n] = map[string][]float64{}
		}
		for _, v := range res.Values {
			s[n][v.Unit] = append(s[n][v.Unit], v.Value)
		}
	}
	if err := br.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return s, nil
}

func median(xs []float64) (float64, bool) {
	if len(xs) == 0 {
		return 0, false
	}
	ys := slices.Clone(xs)
	slices.Sort(ys)
	m := len(ys) / 2
	if len(ys)%2 == 1 {
		return ys[m], true
	}
	return (ys[m-1] + ys[m]) / 2, true
}

func (s samples) median(bench, unit string) (float64, bool) {
	return median(s[bench][unit])
}

// A row of the table. Value is compared with Target; Measured is false
// when the input lacked a figure.
type row struct {
	What, Veil, Limit string
	Value             float64
	Unit              string
	Target            string
	Measured          bool
}

// met reports whether the row's value meets its target.
func (r row) met() (bool, error) {
	op, num := r.Target, ""
	for _, p := range []string{">=", "<=", ">", "<"} {
		if strings.HasPrefix(r.Target, p) {
			op, num = p, strings.TrimPrefix(r.Target, p)
			break
		}
	}
	goal, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return false, fmt.Errorf("target %q: want a comparison such as >=0.8 or <15", r.Target)
	}
	switch op {
	case ">=":
		return r.Value >= goal, nil
	case "<=":
		return r.Value <= goal, nil
	case ">":
		return r.Value > goal, nil
	default:
		return r.Value < goal, nil
	}
}

func mbps(bytesPerSec float64) string { return fmt.Sprintf("%.0f MB/s", bytesPerSec/1e6) }

// ratioRow compares the median throughput (B/s) of two benchmarks.
func ratioRow(s samples, what, veil, limit, target string) row {
	v, ok1 := s.median(veil, "B/s")
	l, ok2 := s.median(limit, "B/s")
	r := row{What: what, Unit: "x", Target: target, Measured: ok1 && ok2 && l > 0}
	if r.Measured {
		r.Value = v / l
		r.Veil, r.Limit = mbps(v), mbps(l)
	}
	return r
}

// metricRow takes a benchmark's own ratio metric (such as of-raw).
func metricRow(s samples, what, bench, unit, limit, target string) row {
	v, ok := s.median(bench, unit)
	r := row{What: what, Unit: "x", Target: target, Measured: ok, Limit: limit}
	if ok {
		r.Value = v
		r.Veil = fmt.Sprintf("%.2f× the limit (%s, median of %d)", v, bench, len(s[bench][unit]))
	}
	return r
}

// goRows are the targets measured by Go benchmarks.
func goRows(s samples) []row {
	rows := []row{
		metricRow(s, "seal a stream (seal.Writer, 2 cores)", "SealVsRaw", "of-raw", "raw AES-256-GCM on both cores, same iteration", ">=0.9"),
		metricRow(s, "open a stream (seal.Reader, 2 cores)", "OpenVsRaw", "of-raw", "raw AES-256-GCM on both cores, same iteration", ">=0.9"),
		ratioRow(s, "sealed mount, sequential write (write-only)", "Mount/SeqWrite/veil-sealed", "Mount/SeqWrite/disk", ">=0.8"),
		ratioRow(s, "sealed mount, sequential write (read-write)", "Mount/SeqWriteRDWR/veil-sealed", "Mount/SeqWriteRDWR/disk", ">=0.8"),
		ratioRow(s, "sealed mount, sequential read", "Mount/SeqRead/veil-sealed", "Mount/SeqRead/disk", ">=0.8"),
		ratioRow(s, "sealed mount, random 4 KiB write", "Mount/RandWrite4K/veil-sealed", "Mount/RandWrite4K/disk", ">=0.5"),
		ratioRow(s, "sealed mount, random 4 KiB write, write-back cache", "Mount/RandWrite4K/veil-sealed-wbcache", "Mount/RandWrite4K/disk", ">=0.5"),
		ratioRow(s, "image mount, first read of every file", "ImageMountReadAll/fresh", "DiskReadAll", ">=0.5"),
	}
	// Image build against hashing the same inputs: time ratio.
	b, ok1 := s.median("BuildPandas", "sec/op")
	h, ok2 := s.median("SHA256Pandas", "sec/op")
	r := row{What: "image build (python3 + pandas) / SHA-256 of its inputs", Unit: "x", Target: ">=0.7", Measured: ok1 && ok2 && b > 0}
	if r.Measured {
		r.Value = h / b
		r.Veil, r.Limit = fmt.Sprintf("%.2f s", b), fmt.Sprintf("%.2f s", h)
	}
	return append(rows, r)
}

// readRows reads the scripts' rows.
func readRows(r io.Reader, name string) ([]row, error) {
	var rows []row
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 6 {
			return nil, fmt.Errorf("%s:%d: %d fields, want 6 (what, veil, limit, value, target, unit)", name, n, len(f))
		}
		x := row{What: f[0], Veil: f[1], Limit: f[2], Target: f[4], Unit: f[5], Measured: f[3] != "" && f[3] != "-"}
		if x.Measured {
			v, err := strconv.ParseFloat(f[3], 64)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: value %q is not a number", name, n, f[3])
			}
			x.Value = v
		}
		if _, err := x.met(); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		rows = append(rows, x)
	}
	return rows, sc.Err()
}

func format(v float64, unit string) string {
	switch unit {
	case "x":
		return fmt.Sprintf("%.2f×", v)
	case "ops/s":
		return fmt.Sprintf("%.0f ops/s", v)
	default:
		return strconv.FormatFloat(v, 'f', -1, 64) + " " + unit
	}
}

func target(t, unit string) string {
	t = strings.NewReplacer(">=", "≥ ", "<=", "≤ ", ">", "> ", "<", "< ").Replace(t)
	if unit == "x" {
		return t + "×"
	}
	return t + " " + unit
}

func write(w io.Writer, rows []row) (met, total int) {
	fmt.Fprintln(w, "| what | veil | limit | ratio or figure | target | |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range rows {
		total++
		verdict, value := "not measured", "–"
		if r.Measured {
			value = format(r.Value, r.Unit)
			if ok, _ := r.met(); ok {
				verdict = "met"
				met++
			} else {
				verdict = "**not met**"
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.What, dash(r.Veil), dash(r.Limit), value, target(r.Target, r.Unit), verdict)
	}
	return met, total
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("benchsummary", flag.ContinueOnError)
	goFile := fs.String("go", "", "Go benchmark output (go test -bench)")
	rowsFile := fs.String("rows", "", "rows written by the benchmark scripts (tab-separated)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *goFile == "" && *rowsFile == "" {
		return errors.New("nothing to summarise: give -go FILE, -rows FILE or both")
	}
	var rows []row
	if *goFile != "" {
		f, err := os.Open(*goFile)
		if err != nil {
			return fmt.Errorf("opening Go benchmark output: %w", err)
		}
		s, err := readGo(f, *goFile)
		f.Close()
		if err != nil {
			return err
		}
		rows = goRows(s)
	}
	if *rowsFile != "" {
		f, err := os.Open(*rowsFile)
		if err != nil {
			return fmt.Errorf("opening the scripts' rows: %w", err)
		}
		more, err := readRows(f, *rowsFile)
		f.Close()
		if err != nil {
			return err
		}
		rows = append(rows, more...)
	}
	met, total := write(stdout, rows)
	fmt.Fprintf(stdout, "\n%d of %d targets met in this run.\n", met, total)
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "benchsummary: error: %v\n", err)
		os.Exit(2)
	}
}
