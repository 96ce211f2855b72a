package jobs_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/sparkcheck"
	"github.com/veil-tee/veil/internal/veiltest"
)

// root is the repository's top directory, seen from this package's.
const root = "../../.."

// javaHome is Debian's openjdk-17-jre-headless.
const javaHome = "/usr/lib/jvm/java-17-openjdk-amd64"

// pinned returns the version scripts/NAME-requirements.txt pins for pkg.
func pinned(t *testing.T, name, pkg string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "scripts", name+"-requirements.txt"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(pkg) + `==(\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("scripts/%s-requirements.txt pins no %s", name, pkg)
	}
	return string(m[1])
}

// spark is what running a job in Spark's local mode outside veil needs:
// pyspark's pip target directory (scripts/setup.sh), Java 17, Debian's
// Python.
type spark struct {
	home string // the pip target directory holding pyspark
	tmp  string // Spark's local and temporary directory
}

func needSpark(t *testing.T) spark {
	t.Helper()
	version := pinned(t, "pyspark", "pyspark")
	dir := os.Getenv("VEIL_PYSPARK_DIR")
	if dir == "" {
		dir = "/var/cache/veil/pip/pyspark-" + version
	}
	if _, err := os.Stat(filepath.Join(dir, "pyspark-"+version+".dist-info")); err != nil {
		veiltest.Skip(t, "needs pyspark %s in %s (scripts/setup.sh installs it)", version, dir)
	}
	if _, err := os.Stat(javaHome + "/bin/java"); err != nil {
		veiltest.Skip(t, "needs Java 17 in %s (the Debian package openjdk-17-jre-headless)", javaHome)
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		veiltest.Skip(t, "needs the Debian package python3")
	}
	veiltest.NeedCommand(t, "bash")
	return spark{home: dir, tmp: t.TempDir()}
}

// submit runs spark-submit in local mode with two task threads and
// returns what the job printed on stdout. Nothing listens beyond loopback
// and the whole process group is killed if the job overruns.
func (s spark) submit(t *testing.T, script string, args ...string) string {
	t.Helper()
	script, err := filepath.Abs(script) // spark-submit runs in s.tmp
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	argv := append([]string{
		"--master", "local[2]",
		"--conf", "spark.sql.shuffle.partitions=4",
		"--conf", "spark.ui.enabled=false",
		"--conf", "spark.ui.showConsoleProgress=false",
		"--conf", "spark.local.dir=" + s.tmp,
		"--driver-java-options", "-Djava.io.tmpdir=" + s.tmp,
		script,
	}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(s.home, "pyspark", "bin", "spark-submit"), argv...)
	cmd.Dir = s.tmp
	cmd.Env = append(os.Environ(),
		"JAVA_HOME="+javaHome,
		"SPARK_HOME="+filepath.Join(s.home, "pyspark"),
		"PYTHONPATH="+s.home,
		"PYSPARK_PYTHON=/usr/bin/python3",
		"PYSPARK_DRIVER_PYTHON=/usr/bin/python3",
		"SPARK_LOCAL_IP=127.0.0.1",
		"TMPDIR="+s.tmp,
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	start := time.Now()
	err = cmd.Run()
	// The JVM's children are gone with it; make sure of the group too.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil {
		t.Fatalf("spark-submit %s %s: %v\nstdout:\n%s\nstderr (last lines):\n%s", filepath.Base(script), strings.Join(args, " "), err, out.String(), tail(errs.String(), 60))
	}
	t.Logf("spark-submit %s %s: %v", filepath.Base(script), strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	return out.String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// generate writes the TPC-H tables at scale factor sf with
// scripts/tpch-gen.sh into dir/<format>.
func generate(t *testing.T, sf, dir, format string) string {
	t.Helper()
	version := pinned(t, "tpchgen", "tpchgen-cli")
	gen := os.Getenv("VEIL_TPCHGEN_DIR")
	if gen == "" {
		gen = "/var/cache/veil/pip/tpchgen-cli-" + version
	}
	if _, err := os.Stat(filepath.Join(gen, "bin", "tpchgen-cli")); err != nil {
		veiltest.Skip(t, "needs tpchgen-cli %s in %s (scripts/setup.sh installs it)", version, gen)
	}
	out := filepath.Join(dir, format)
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "tpch-gen.sh"), sf, out, format)
	// The tables are only read: hard links to the machine's cache do.
	cmd.Env = append(os.Environ(), "VEIL_TPCH_LINK=1")
	if os.Geteuid() != 0 && os.Getenv("VEIL_TPCH_CACHE") == "" {
		cmd.Env = append(cmd.Env, "VEIL_TPCH_CACHE="+filepath.Join(dir, "cache"))
	}
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/tpch-gen.sh %s %s: %v\n%s", sf, format, err, b)
	}
	t.Logf("scripts/tpch-gen.sh %s %s:\n%s", sf, format, b)
	return out
}

var timeLine = regexp.MustCompile(`(?m)^tpch (q[0-9]+|total) ([0-9.]+)$`)

// times reads the `tpch qN SECONDS` lines tpch.py prints.
func times(t *testing.T, stdout string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range timeLine.FindAllStringSubmatch(stdout, -1) {
		m[l[1]] = l[2]
	}
	return m
}

// TestTPCH runs the 22 TPC-H queries at SF 0.01 with tpch.py in Spark's
// local mode, on Parquet and on CSV input, and checks that both give the
// same results, and that the results agree with what the specification
// and the generated files say without Spark.
func TestTPCH(t *testing.T) {
	if testing.Short() {
		t.Skip("two Spark runs of 22 queries: minutes on two cores")
	}
	s := needSpark(t)
	const sf = "0.01"
	data := t.TempDir()
	in := map[string]string{"parquet": generate(t, sf, data, "parquet"), "csv": generate(t, sf, data, "csv")}
	job := filepath.Join(root, "examples", "spark", "jobs", "tpch.py")
	out := map[string]string{}
	took := map[string]map[string]string{}
	for _, format := range []string{"parquet", "csv"} {
		out[format] = filepath.Join(data, "out-"+format)
		took[format] = times(t, s.submit(t, job, "--data", in[format], "--format", format, "--out", out[format]))
	}
	var report strings.Builder
	fmt.Fprintf(&report, "TPC-H SF %s, local[2], seconds per query:\n%-6s %8s %8s\n", sf, "query", "parquet", "csv")
	for q := 1; q <= 23; q++ {
		name := fmt.Sprintf("q%d", q)
		if q == 23 {
			name = "total"
		}
		for _, format := range []string{"parquet", "csv"} {
			if took[format][name] == "" {
				t.Fatalf("tpch.py on %s printed no time for %s", format, name)
			}
		}
		fmt.Fprintf(&report, "%-6s %8s %8s\n", name, took["parquet"][name], took["csv"][name])
	}
	t.Log(report.String())

	results := map[int]sparkcheck.Table{}
	for q := 1; q <= 22; q++ {
		name := fmt.Sprintf("q%d", q)
		sql := filepath.Join(root, "examples", "spark", "jobs", "tpch", name+".sql")
		if err := sparkcheck.CompareQuery(filepath.Join(out["parquet"], name), filepath.Join(out["csv"], name), sql); err != nil {
			t.Errorf("%s: CSV input gives another result than Parquet: %v", name, err)
		}
		r, err := sparkcheck.ReadCSVDir(filepath.Join(out["parquet"], name))
		if err != nil {
			t.Fatal(err)
		}
		results[q] = r
	}
	checkSpecFacts(t, results)
	checkQ1Q6(t, results, filepath.Join(in["csv"], "lineitem"))
	checkQ13(t, results[13], filepath.Join(in["csv"], "customer"))
}

// column returns the cells of the named column.
func column(t *testing.T, r sparkcheck.Table, name string) []string {
	t.Helper()
	for i, h := range r.Header {
		if h == name {
			var cells []string
			for _, row := range r.Rows {
				cells = append(cells, row[i])
			}
			return cells
		}
	}
	t.Fatalf("no column %s in %q", name, r.Header)
	return nil
}

// checkSpecFacts checks what the specification fixes whatever the scale:
// the groups some queries must have, and the row limits.
func checkSpecFacts(t *testing.T, r map[int]sparkcheck.Table) {
	t.Helper()
	same := func(q int, col string, want ...string) {
		t.Helper()
		if got := column(t, r[q], col); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("q%d: column %s is %q, want %q", q, col, got, want)
		}
	}
	// Q1: one row per return flag and line status that occur together.
	same(1, "l_returnflag", "A", "N", "N", "R")
	same(1, "l_linestatus", "F", "F", "O", "F")
	// Q4: the five order priorities.
	same(4, "o_orderpriority", "1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW")
	// Q7: France and Germany both ways, 1995 and 1996.
	same(7, "supp_nation", "FRANCE", "FRANCE", "GERMANY", "GERMANY")
	same(7, "l_year", "1995", "1996", "1995", "1996")
	// Q8: the two years of the order dates.
	same(8, "o_year", "1995", "1996")
	// Q12: the two ship modes.
	same(12, "l_shipmode", "MAIL", "SHIP")
	// Q22: the seven country codes, ordered.
	same(22, "cntrycode", "13", "17", "18", "23", "29", "30", "31")
	// One row: the sums.
	for _, q := range []int{6, 14, 19} {
		if len(r[q].Rows) != 1 {
			t.Errorf("q%d: %d rows, want 1", q, len(r[q].Rows))
		}
	}
	// The row counts the queries' limits give (reached at SF 0.01), and
	// the limits the others stay under.
	for q, n := range map[int]int{3: 10, 10: 20} {
		if len(r[q].Rows) != n {
			t.Errorf("q%d: %d rows, want %d", q, len(r[q].Rows), n)
		}
	}
	for q, n := range map[int]int{2: 100, 5: 5, 9: 25 * 7, 15: 1 << 20, 17: 1, 18: 100, 21: 100} {
		if len(r[q].Rows) > n || (q != 17 && len(r[q].Rows) == 0) {
			t.Errorf("q%d: %d rows, want 1 to %d", q, len(r[q].Rows), n)
		}
	}
	// Q5: only nations of Asia.
	for _, n := range column(t, r[5], "n_name") {
		if !strings.Contains(",CHINA,INDIA,INDONESIA,JAPAN,VIETNAM,", ","+n+",") {
			t.Errorf("q5: %s is not in Asia", n)
		}
	}
}

// readTable calls fn with each row of a generated table's CSV files, as a
// map from column name to cell.
func readTable(t *testing.T, dir string, fn func(row map[string]string)) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.csv"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CSV files in %s: %v", dir, err)
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		r := csv.NewReader(fh)
		header, err := r.Read()
		if err != nil {
			t.Fatal(err)
		}
		row := map[string]string{}
		for {
			rec, err := r.Read()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("reading %s: %v", f, err)
			}
			for i, h := range header {
				row[h] = rec[i]
			}
			fn(row)
		}
		fh.Close()
	}
}

// fixed parses a decimal as an integer count of 10^-scale.
func fixed(t *testing.T, s string, scale int) int64 {
	t.Helper()
	whole, frac, _ := strings.Cut(s, ".")
	if len(frac) > scale {
		t.Fatalf("%q has more than %d decimals", s, scale)
	}
	v, err := strconv.ParseInt(whole+frac+strings.Repeat("0", scale-len(frac)), 10, 64)
	if err != nil {
		t.Fatalf("parsing %q: %v", s, err)
	}
	return v
}

// checkQ1Q6 recomputes Q1's sums and counts and Q6's revenue from the
// generated lineitem files, in exact decimal arithmetic, and compares
// them with Spark's cells (whose scales follow Spark's decimal rules).
func checkQ1Q6(t *testing.T, r map[int]sparkcheck.Table, lineitem string) {
	t.Helper()
	type sums struct{ qty, base, disc, charge, count int64 }
	q1 := map[string]*sums{}
	var q6 int64
	readTable(t, lineitem, func(row map[string]string) {
		qty, price := fixed(t, row["l_quantity"], 2), fixed(t, row["l_extendedprice"], 2)
		disc, tax := fixed(t, row["l_discount"], 2), fixed(t, row["l_tax"], 2)
		ship := row["l_shipdate"]
		if ship <= "1998-09-02" { // 1998-12-01 - 90 days
			k := row["l_returnflag"] + row["l_linestatus"]
			if q1[k] == nil {
				q1[k] = &sums{}
			}
			s := q1[k]
			s.qty += qty
			s.base += price
			s.disc += price * (100 - disc)                 // 10^-4
			s.charge += price * (100 - disc) * (100 + tax) // 10^-6
			s.count++
		}
		if ship >= "1994-01-01" && ship < "1995-01-01" && disc >= 5 && disc <= 7 && qty < 2400 {
			q6 += price * disc // 10^-4
		}
	})
	format := func(v int64, scale int) string {
		s := fmt.Sprintf("%0*d", scale+1, v)
		return s[:len(s)-scale] + "." + s[len(s)-scale:]
	}
	keys := make([]string, 0, len(q1))
	for k := range q1 {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) != len(r[1].Rows) {
		t.Fatalf("q1: %d groups in lineitem, %d rows from Spark", len(keys), len(r[1].Rows))
	}
	for i, k := range keys {
		s := q1[k]
		want := []string{k[:1], k[1:], format(s.qty, 2), format(s.base, 2), format(s.disc, 4), format(s.charge, 6)}
		if got := r[1].Rows[i][:6]; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("q1 row %d: Spark %q, computed from lineitem %q", i+1, got, want)
		}
		if got := column(t, r[1], "count_order")[i]; got != strconv.FormatInt(s.count, 10) {
			t.Errorf("q1 row %d: count_order %s, computed %d", i+1, got, s.count)
		}
	}
	if got := r[6].Rows[0][0]; got != format(q6, 4) {
		t.Errorf("q6: Spark's revenue %s, computed from lineitem %s", got, format(q6, 4))
	}
	t.Logf("q1 and q6 agree with lineitem's files: q6 revenue %s", format(q6, 4))
}

// checkQ13 checks that Q13 counts every customer once: the number of
// customers with each count of orders adds up to all customers.
func checkQ13(t *testing.T, r sparkcheck.Table, customer string) {
	t.Helper()
	customers := 0
	readTable(t, customer, func(map[string]string) { customers++ })
	total := 0
	for _, c := range column(t, r, "custdist") {
		n, err := strconv.Atoi(c)
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	if total != customers {
		t.Errorf("q13: the customer distribution counts %d customers, customer has %d", total, customers)
	}
}

// TestMultiParty runs multi_party.py in Spark's local mode on the two
// parties' tables of examples/multi-party and compares its result with
// that of the pandas program there (examples/multi-party/app/join.py).
func TestMultiParty(t *testing.T) {
	if testing.Short() {
		t.Skip("a Spark run: a minute on two cores")
	}
	s := needSpark(t)
	for _, m := range []string{"numpy", "pandas"} {
		if err := exec.Command("/usr/bin/python3", "-c", "import "+m).Run(); err != nil {
			veiltest.Skip(t, "needs the Debian package python3-pandas (python3 cannot import %s)", m)
		}
	}
	dir := t.TempDir()
	people, incomes := filepath.Join(dir, "people.csv"), filepath.Join(dir, "incomes.csv")
	py := func(args ...string) {
		t.Helper()
		if b, err := exec.Command("/usr/bin/python3", args...).CombinedOutput(); err != nil {
			t.Fatalf("python3 %s: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	py(filepath.Join(root, "examples", "multi-party", "gen_parties.py"), "--rows", "3000", people, incomes)
	pandas := filepath.Join(dir, "pandas")
	if err := os.Mkdir(pandas, 0o755); err != nil {
		t.Fatal(err)
	}
	py(filepath.Join(root, "examples", "multi-party", "app", "join.py"), people, incomes, filepath.Join(pandas, "part-00000.csv"))

	out := filepath.Join(dir, "spark")
	s.submit(t, filepath.Join(root, "examples", "spark", "jobs", "multi_party.py"), people, incomes, out)
	got, err := sparkcheck.ReadCSVDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Rows) != 10 {
		t.Errorf("%d jobs, want the 10 of gen_parties.py", len(got.Rows))
	}
	// pandas rounds the mean half to even in binary, Spark half up in
	// decimal: a cent apart at most, 1e-7 of an income.
	if err := sparkcheck.CompareCSVDirsWith(pandas, out, sparkcheck.Options{Order: []string{"job"}, Tolerance: 1e-6}); err != nil {
		t.Fatalf("Spark's result differs from pandas': %v", err)
	}
	t.Logf("multi-party on Spark equals pandas: %d jobs", len(got.Rows))
}
