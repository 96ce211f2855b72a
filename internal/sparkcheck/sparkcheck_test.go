package sparkcheck

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The fixtures in testdata are Spark 3.5's own output (testdata/gen.py):
// ordered1 and ordered3 hold one result ordered by total, with ties, in 1
// and 3 part files and with the ties in other orders; sums1 and sums7 hold
// sums of doubles over 1 and 7 partitions, which differ in the last digits.

// copyDir copies a fixture directory (part files, _SUCCESS, .crc files)
// into a temporary directory, to be changed by a test.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// edit replaces the first occurrence of old in dir's part files.
func edit(t *testing.T, dir, old, new string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "part-*.csv"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if s := string(b); strings.Contains(s, old) {
			if err := os.WriteFile(f, []byte(strings.Replace(s, old, new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no part file in %s contains %q", dir, old)
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one naming %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not name %q", err, p)
		}
	}
}

// wantDiff checks that err holds a Difference at row and column, and
// that its message names parts.
func wantDiff(t *testing.T, err error, row int, column string, parts ...string) {
	t.Helper()
	wantErr(t, err, parts...)
	var d *Difference
	if !errors.As(err, &d) {
		t.Fatalf("error %q holds no Difference", err)
	}
	if d.Row != row || d.Column != column {
		t.Fatalf("the difference is at row %d, column %q; want row %d, column %q (%v)", d.Row, d.Column, row, column, err)
	}
}

func TestReadCSVDir(t *testing.T) {
	one, err := ReadCSVDir("testdata/ordered1")
	if err != nil {
		t.Fatal(err)
	}
	three, err := ReadCSVDir("testdata/ordered3")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"customer", "name", "total"}; !reflect.DeepEqual(one.Header, want) || !reflect.DeepEqual(three.Header, want) {
		t.Fatalf("headers %q and %q, want %q", one.Header, three.Header, want)
	}
	if len(one.Rows) != 60 || len(three.Rows) != 60 {
		t.Fatalf("%d and %d rows, want 60 in each (the header of each of the 3 part files is not a row)", len(one.Rows), len(three.Rows))
	}
	// A quoted field with a comma is one cell.
	if got := one.Rows[0][1]; got != "Customer 7, of town 2" {
		t.Fatalf("row 1's name is %q", got)
	}
	// The rows of the 3 part files come in the part files' order.
	if one.Rows[0][2] != "175.00" || three.Rows[0][2] != "175.00" || three.Rows[59][2] != "100.00" {
		t.Fatalf("the 3 part files were not read in order: first %q, last %q", three.Rows[0], three.Rows[59])
	}
	empty, err := ReadCSVDir("testdata/empty")
	if err != nil || len(empty.Rows) != 0 || len(empty.Header) != 3 {
		t.Fatalf("empty result: %+v, %v", empty, err)
	}
}

func TestReadCSVDirErrors(t *testing.T) {
	_, err := ReadCSVDir(filepath.Join(t.TempDir(), "nothing"))
	wantErr(t, err, "reading the Spark output directory")

	// Only Spark's bookkeeping files: no result.
	dir := copyDir(t, "testdata/ordered1")
	files, _ := filepath.Glob(filepath.Join(dir, "part-*"))
	for _, f := range files {
		os.Remove(f)
	}
	_, err = ReadCSVDir(dir)
	wantErr(t, err, "no part files")

	// Part files with different headers.
	dir = copyDir(t, "testdata/ordered3")
	edit(t, dir, "customer,name,total\n1,", "customer,name,amount\n1,")
	_, err = ReadCSVDir(dir)
	wantErr(t, err, "header", "amount")

	// A row with a cell too many.
	dir = copyDir(t, "testdata/ordered1")
	edit(t, dir, "175.00\n", "175.00,9\n")
	_, err = ReadCSVDir(dir)
	wantErr(t, err, "wrong number of fields")
}

func TestCompareOrdered(t *testing.T) {
	if err := CompareCSVDirs("testdata/ordered1", "testdata/ordered1"); err != nil {
		t.Fatalf("a result differs from itself: %v", err)
	}
	// The ties come in another order: a strict comparison names row 1.
	err := CompareCSVDirs("testdata/ordered1", "testdata/ordered3")
	wantDiff(t, err, 1, "customer", "row 1, column customer", `want "7", got "3"`)
	var d *Difference
	if errors.As(err, &d); d.Want != "7" || d.Got != "3" {
		t.Fatalf("the difference's cells are %q and %q", d.Want, d.Got)
	}

	// Ordered by total, ties in any order: equal, both ways.
	byTotal := Options{Order: []string{"total"}}
	if err := CompareCSVDirsWith("testdata/ordered1", "testdata/ordered3", byTotal); err != nil {
		t.Fatal(err)
	}
	if err := CompareCSVDirsWith("testdata/ordered3", "testdata/ordered1", byTotal); err != nil {
		t.Fatal(err)
	}
	if err := CompareCSVDirsWith("testdata/ordered1", "testdata/ordered3", Options{Unordered: true}); err != nil {
		t.Fatal(err)
	}
}

func TestCompareFindsDifferences(t *testing.T) {
	byTotal := Options{Order: []string{"total"}}
	for _, c := range []struct {
		name     string
		old, new string
		opts     Options
		row      int
		column   string
		want     []string
	}{
		// Row 16 is the first of the 150.00 run in ordered1.
		{"a value in the ordered column", "2,\"Customer 2, of town 2\",150.00", "2,\"Customer 2, of town 2\",150.01", byTotal, 16, "total",
			[]string{"row 16, column total", `want "150.00", got "150.01"`}},
		{"a cell within a run of ties", "Customer 6, of town 3", "Customer 6, of town 9", byTotal, 16, "name",
			[]string{"rows 16 to 30, tied in total", `"6" "Customer 6, of town 3" "150.00"`, "is missing", "column name"}},
		{"a cell, in any order", "Customer 9, of town 4", "Customer 9, of town 5", Options{Unordered: true}, 1, "name",
			[]string{"in any order", "Customer 9, of town 4", "column name"}},
		{"a row in the wrong run", "5,\"Customer 5, of town 0\",125.00", "5,\"Customer 5, of town 0\",175.00", byTotal, 31, "total",
			[]string{"row 31, column total", `want "125.00", got "175.00"`}},
		{"a missing row", "8,\"Customer 8, of town 1\",100.00\n", "", byTotal, 60, "",
			[]string{"59 rows instead of 60"}},
		{"an extra row", "8,\"Customer 8, of town 1\",100.00\n", "8,\"Customer 8, of town 1\",100.00\n8,\"Customer 8, of town 1\",100.00\n", byTotal, 61, "",
			[]string{"61 rows instead of 60", "row 61", "is extra"}},
		{"the header", "customer,name,total", "customer,name,sum", byTotal, 0, "",
			[]string{"headers differ"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := copyDir(t, "testdata/ordered1")
			edit(t, dir, c.old, c.new)
			wantDiff(t, CompareCSVDirsWith("testdata/ordered1", dir, c.opts), c.row, c.column, c.want...)
		})
	}
}

func TestCompareTolerance(t *testing.T) {
	// Sums of doubles over 1 and 7 partitions differ in their last digits
	// (4999000.0 and 4999000.000000001): equal within the tolerance.
	if err := CompareCSVDirs("testdata/sums1", "testdata/sums7"); err != nil {
		t.Fatal(err)
	}
	err := CompareCSVDirsWith("testdata/sums1", "testdata/sums7", Options{Tolerance: 1e-18})
	wantDiff(t, err, 1, "sum_y", `want "4999000.0", got "4999000.000000001"`)

	// A difference beyond the tolerance.
	dir := copyDir(t, "testdata/sums1")
	edit(t, dir, "4999500.0", "4999500.01")
	wantDiff(t, CompareCSVDirs("testdata/sums1", dir), 2, "sum_y")

	// Integers are exact: a count or a key that differs by one differs,
	// however large it is.
	w := Table{Header: []string{"key", "n"}, Rows: [][]string{{"1", "123456789012345"}}}
	g := Table{Header: []string{"key", "n"}, Rows: [][]string{{"1", "123456789012346"}}}
	wantDiff(t, Compare(w, g, Options{Tolerance: 1e-6}), 1, "n")
	// Text that is no number is exact too.
	g = Table{Header: []string{"key", "n"}, Rows: [][]string{{"1", "one"}}}
	wantDiff(t, Compare(w, g, Options{}), 1, "n")
}

func TestCompareEmpty(t *testing.T) {
	if err := CompareCSVDirs("testdata/empty", "testdata/empty"); err != nil {
		t.Fatal(err)
	}
	wantDiff(t, CompareCSVDirs("testdata/ordered1", "testdata/empty"), 1, "", "0 rows instead of 60", "is missing")
	wantErr(t, CompareCSVDirsWith("testdata/ordered1", "testdata/empty", Options{Unordered: true}), "0 rows instead of 60")
}

func TestOrderColumns(t *testing.T) {
	for _, c := range []struct {
		query string
		want  []string
	}{
		{"select a, b from t order by a", []string{"a"}},
		{"select a, sum(b) as s from t group by a order by s desc, a limit 10;", []string{"s", "a"}},
		{"select x from t\n-- order by y\nORDER BY\n\tt.x ASC NULLS LAST", []string{"x"}},
		// Only the query's own ORDER BY counts, not a subquery's.
		{"select * from (select a from t order by a limit 3) as s", nil},
		{"select sum(x) from t", nil},
	} {
		got, err := OrderColumns(c.query)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("OrderColumns(%q) = %q, %v; want %q", c.query, got, err, c.want)
		}
	}
	_, err := OrderColumns("select a from t order by a + 1")
	wantErr(t, err, `"a + 1"`, "not a column name")
}

// TestOrderColumnsTPCH reads the order of the TPC-H queries the Spark jobs
// run (examples/spark/jobs/tpch).
func TestOrderColumnsTPCH(t *testing.T) {
	for q, want := range map[int][]string{
		1:  {"l_returnflag", "l_linestatus"},
		2:  {"s_acctbal", "n_name", "s_name", "p_partkey"},
		3:  {"revenue", "o_orderdate"},
		6:  nil,
		9:  {"nation", "o_year"},
		13: {"custdist", "c_count"},
		15: {"s_suppkey"},
		18: {"o_totalprice", "o_orderdate"},
		21: {"numwait", "s_name"},
		22: {"cntrycode"},
	} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", "spark", "jobs", "tpch", "q"+strconv.Itoa(q)+".sql"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := OrderColumns(string(b))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("q%d: %q, %v; want %q", q, got, err, want)
		}
	}
}

func TestCompareQuery(t *testing.T) {
	dir := t.TempDir()
	ordered := filepath.Join(dir, "ordered.sql")
	os.WriteFile(ordered, []byte("select customer, name, sum(amount) as total\nfrom payments\ngroup by customer, name\norder by total desc;\n"), 0o644)
	if err := CompareQuery("testdata/ordered1", "testdata/ordered3", ordered); err != nil {
		t.Fatal(err)
	}
	// Ordered by name: the ties of total are no ties.
	byName := filepath.Join(dir, "by-name.sql")
	os.WriteFile(byName, []byte("select customer, name, total from totals order by name"), 0o644)
	wantDiff(t, CompareQuery("testdata/ordered1", "testdata/ordered3", byName), 1, "customer")
	// No order at all: rows in any order.
	unordered := filepath.Join(dir, "unordered.sql")
	os.WriteFile(unordered, []byte("select customer, name, total from totals"), 0o644)
	if err := CompareQuery("testdata/ordered1", "testdata/ordered3", unordered); err != nil {
		t.Fatal(err)
	}
	wantErr(t, CompareQuery("testdata/ordered1", "testdata/ordered3", filepath.Join(dir, "none.sql")), "reading the query")
}
