// Package sparkcheck compares the results of two Spark runs of the same job,
// as Spark writes them: a directory of CSV part files with a header line
// (DataFrameWriter.csv with header=true), beside _SUCCESS and .crc files,
// which are ignored.
//
// Rows are compared in order by default: a query that orders its result
// must order it the same way in both runs. Ties are the exception: rows
// equal in the columns a query orders by may come in any order (Spark's
// sort is not stable across different partitionings), so a comparison can
// name those columns (Options.Order, or CompareQuery, which reads them from
// the query's ORDER BY) and each run of consecutive tied rows is then
// compared as a multiset. A result that is not ordered at all is compared
// as a multiset (Options.Unordered). A LIMIT that cuts through a run of
// ties may keep different rows in the two runs; that is reported as a
// difference.
//
// Cells are equal when their text is. Otherwise, when both are numbers and
// at least one has a fraction or an exponent, they are equal within a
// relative tolerance (Options.Tolerance, default DefaultTolerance): sums
// of doubles depend on the order in which partitions were added. Integers
// (counts, keys) must be equal exactly.
//
// Errors name the first difference: the row (1-based, after the header),
// the column and both values.
package sparkcheck

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// DefaultTolerance is the relative difference allowed between two
// fractional numbers.
const DefaultTolerance = 1e-9

// Table is a result: its header and its rows, in the order of the part
// files (by name) and of the lines within them.
type Table struct {
	Header []string
	Rows   [][]string
}

// A Difference is the first difference Compare finds between two results.
// The errors of the Compare functions wrap it: errors.As finds it.
type Difference struct {
	// Row is the row (1-based, after the header) of the difference, or the
	// first row of the run of ties or of the rows compared in any order
	// that holds it; 0 when the headers differ.
	Row int
	// Column is the name of the differing cell's column; empty when the
	// headers differ or a row is missing or extra.
	Column string
	// Want and Got are the differing cells, or the headers or the missing
	// or extra row as CSV (empty on the side without it).
	Want, Got string
	msg       string
}

func (d *Difference) Error() string { return d.msg }

func differ(row int, column, want, got, format string, args ...any) *Difference {
	return &Difference{Row: row, Column: column, Want: want, Got: got, msg: fmt.Sprintf(format, args...)}
}

// Options say how two tables are compared.
type Options struct {
	// Order names the columns the result is ordered by: consecutive rows
	// equal in all of them are a run of ties, compared as a multiset.
	// Empty: every row must be at its place.
	Order []string
	// Unordered compares all rows as a multiset.
	Unordered bool
	// Tolerance is the relative difference allowed between fractional
	// numbers; 0 means DefaultTolerance.
	Tolerance float64
}

// ReadCSVDir reads the CSV part files of a Spark output directory: every
// regular file whose name does not start with "_" or "." (Hadoop's hidden
// files), in name order. Each non-empty file starts with the header line,
// which must be the same in all of them; empty files (of an empty
// partition) are skipped.
func ReadCSVDir(dir string) (Table, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return Table{}, fmt.Errorf("reading the Spark output directory: %w", err)
	}
	var t Table
	parts := 0
	for _, e := range entries { // os.ReadDir sorts by name
		name := e.Name()
		if strings.HasPrefix(name, "_") || strings.HasPrefix(name, ".") || !e.Type().IsRegular() {
			continue
		}
		parts++
		header, rows, err := readPart(filepath.Join(dir, name))
		if err != nil {
			return Table{}, err
		}
		if header == nil {
			continue
		}
		if t.Header == nil {
			t.Header = header
		} else if !equalStrings(t.Header, header) {
			return Table{}, fmt.Errorf("reading %s: its header %q differs from the first part file's %q", filepath.Join(dir, name), header, t.Header)
		}
		t.Rows = append(t.Rows, rows...)
	}
	if parts == 0 {
		return Table{}, fmt.Errorf("reading the Spark output directory %s: no part files", dir)
	}
	if t.Header == nil {
		return Table{}, fmt.Errorf("reading the Spark output directory %s: no header line in any part file", dir)
	}
	return t, nil
}

func readPart(path string) (header []string, rows [][]string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading a part file: %w", err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	// Spark escapes a quote inside a quoted field with a backslash, which
	// is not RFC 4180; read such fields as they are.
	r.LazyQuotes = true
	header, err = r.Read()
	if errors.Is(err, io.EOF) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading the header of %s: %w", path, err)
	}
	r.FieldsPerRecord = len(header)
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return header, rows, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading %s: %w", path, err)
		}
		rows = append(rows, rec)
	}
}

// CompareCSVDirs compares two Spark output directories row by row, in
// order, with the default tolerance.
func CompareCSVDirs(want, got string) error {
	return CompareCSVDirsWith(want, got, Options{})
}

// CompareCSVDirsWith compares two Spark output directories as o says.
func CompareCSVDirsWith(want, got string, o Options) error {
	w, err := ReadCSVDir(want)
	if err != nil {
		return err
	}
	g, err := ReadCSVDir(got)
	if err != nil {
		return err
	}
	if err := Compare(w, g, o); err != nil {
		return fmt.Errorf("comparing %s with %s: %w", got, want, err)
	}
	return nil
}

// CompareQuery compares the outputs of the SQL query in the file sqlPath:
// in the order of its last ORDER BY, ties as multisets; as a multiset if
// it has none.
func CompareQuery(want, got, sqlPath string) error {
	text, err := os.ReadFile(sqlPath)
	if err != nil {
		return fmt.Errorf("reading the query: %w", err)
	}
	order, err := OrderColumns(string(text))
	if err != nil {
		return fmt.Errorf("reading the order of %s: %w", sqlPath, err)
	}
	return CompareCSVDirsWith(want, got, Options{Order: order, Unordered: order == nil})
}

// Compare compares two tables as o says.
func Compare(want, got Table, o Options) error {
	tol := o.Tolerance
	if tol == 0 {
		tol = DefaultTolerance
	}
	if !equalStrings(want.Header, got.Header) {
		w, g := strings.Join(want.Header, ","), strings.Join(got.Header, ",")
		return differ(0, "", w, g, "the headers differ: want %q, got %q", w, g)
	}
	keys, err := columnIndexes(want.Header, o.Order)
	if err != nil {
		return err
	}
	c := comparer{header: want.Header, tol: tol}
	if o.Unordered {
		return asError(c.multiset(want.Rows, got.Rows, 0))
	}
	n := min(len(want.Rows), len(got.Rows))
	for i := 0; i < n; {
		// The run of rows tied with row i in want.
		j := i + 1
		for len(keys) > 0 && j < len(want.Rows) && c.sameIn(want.Rows[i], want.Rows[j], keys) {
			j++
		}
		if j == i+1 {
			if err := c.row(i, want.Rows[i], got.Rows[i]); err != nil {
				return err
			}
			i++
			continue
		}
		end := min(j, len(got.Rows))
		for k := i; k < end; k++ {
			for _, col := range keys {
				if w, g := want.Rows[k][col], got.Rows[k][col]; !c.cell(w, g) {
					return c.cellDifference(k, col, w, g)
				}
			}
		}
		if err := c.multiset(want.Rows[i:end], got.Rows[i:end], i); err != nil {
			err.msg = fmt.Sprintf("among rows %d to %d, tied in %s: %s", i+1, end, strings.Join(o.Order, ", "), err.msg)
			return err
		}
		i = end
	}
	return asError(countError(want.Rows, got.Rows))
}

// asError turns a nil *Difference into a nil error.
func asError(d *Difference) error {
	if d == nil {
		return nil
	}
	return d
}

func countError(want, got [][]string) *Difference {
	switch {
	case len(want) > len(got):
		w := strings.Join(want[len(got)], ",")
		return differ(len(got)+1, "", w, "", "%d rows instead of %d: row %d %q is missing", len(got), len(want), len(got)+1, want[len(got)])
	case len(got) > len(want):
		g := strings.Join(got[len(want)], ",")
		return differ(len(want)+1, "", "", g, "%d rows instead of %d: row %d %q is extra", len(got), len(want), len(want)+1, got[len(want)])
	}
	return nil
}

func columnIndexes(header, names []string) ([]int, error) {
	idx := make([]int, 0, len(names))
	for _, n := range names {
		i := indexOf(header, n)
		if i < 0 {
			return nil, fmt.Errorf("ordering by %q: no such column in %q", n, header)
		}
		idx = append(idx, i)
	}
	return idx, nil
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if strings.EqualFold(v, s) {
			return i
		}
	}
	return -1
}

type comparer struct {
	header []string
	tol    float64
}

// row compares row i (0-based) of both tables.
func (c comparer) row(i int, want, got []string) *Difference {
	for k := range want {
		if !c.cell(want[k], got[k]) {
			return c.cellDifference(i, k, want[k], got[k])
		}
	}
	return nil
}

func (c comparer) cellDifference(i, k int, want, got string) *Difference {
	return differ(i+1, c.header[k], want, got, "row %d, column %s: want %q, got %q", i+1, c.header[k], want, got)
}

func (c comparer) sameIn(a, b []string, cols []int) bool {
	for _, k := range cols {
		if !c.cell(a[k], b[k]) {
			return false
		}
	}
	return true
}

// multiset compares want and got as multisets of rows: both sorted, then
// row by row. first is the row number of their first row, for messages.
func (c comparer) multiset(want, got [][]string, first int) *Difference {
	w, g := c.sorted(want), c.sorted(got)
	for i := range min(len(w), len(g)) {
		if cmp := c.compareRows(w[i], g[i]); cmp != 0 {
			missing := w[i]
			verb := "is missing"
			if cmp > 0 {
				missing, verb = g[i], "is extra"
			}
			for k := range w[i] {
				if !c.cell(w[i][k], g[i][k]) {
					return differ(first+1, c.header[k], w[i][k], g[i][k], "in any order: row %q %s (first difference in column %s: want %q, got %q)", missing, verb, c.header[k], w[i][k], g[i][k])
				}
			}
		}
	}
	if err := countError(w, g); err != nil {
		err.msg = fmt.Sprintf("in any order, from row %d: %s", first+1, err.msg)
		return err
	}
	return nil
}

func (c comparer) sorted(rows [][]string) [][]string {
	s := append([][]string(nil), rows...)
	sort.SliceStable(s, func(i, j int) bool { return c.compareRows(s[i], s[j]) < 0 })
	return s
}

func (c comparer) compareRows(a, b []string) int {
	for k := range a {
		if c.cell(a[k], b[k]) {
			continue
		}
		x, xok := number(a[k])
		y, yok := number(b[k])
		switch {
		case xok && yok && x < y:
			return -1
		case xok && yok && x > y:
			return 1
		case a[k] < b[k]:
			return -1
		default:
			return 1
		}
	}
	return 0
}

// cell says whether two cells are equal: the same text, or numbers within
// the tolerance when one of them is fractional.
func (c comparer) cell(a, b string) bool {
	if a == b {
		return true
	}
	x, xok := number(a)
	y, yok := number(b)
	if !xok || !yok || (isInteger(a) && isInteger(b)) {
		return false
	}
	if x == y {
		return true
	}
	return math.Abs(x-y) <= c.tol*math.Max(math.Abs(x), math.Abs(y))
}

func number(s string) (float64, bool) {
	f, err := strconv.ParseFloat(s, 64)
	return f, err == nil && !math.IsNaN(f)
}

var integerRE = regexp.MustCompile(`^[-+]?[0-9]+$`)

func isInteger(s string) bool { return integerRE.MatchString(s) }

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

var (
	orderByRE = regexp.MustCompile(`(?i)\border\s+by\b`)
	limitRE   = regexp.MustCompile(`(?i)\blimit\s+[0-9]+\s*;?\s*$`)
	commentRE = regexp.MustCompile(`--[^\n]*`)
	suffixRE  = regexp.MustCompile(`(?i)\s+(asc|desc)?(\s+nulls\s+(first|last))?$`)
	nameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// OrderColumns returns the columns of a query's final ORDER BY (the one
// outside all parentheses), without ASC/DESC, or nil if it has none. The
// items must be plain column names of the result (as in the TPC-H
// queries); an expression is an error.
func OrderColumns(query string) ([]string, error) {
	q := commentRE.ReplaceAllString(query, "")
	q = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(q), ";"))
	var at []int
	for _, m := range orderByRE.FindAllStringIndex(q, -1) {
		if depth(q[:m[0]]) == 0 {
			at = m
		}
	}
	if at == nil {
		return nil, nil
	}
	clause := q[at[1]:]
	if depth(clause) != 0 {
		return nil, fmt.Errorf("the ORDER BY clause %q is not at the end of the query", strings.TrimSpace(clause))
	}
	clause = limitRE.ReplaceAllString(clause, "")
	var cols []string
	for _, item := range strings.Split(clause, ",") {
		name := suffixRE.ReplaceAllString(strings.TrimSpace(item), "")
		if i := strings.LastIndexByte(name, '.'); i >= 0 {
			name = name[i+1:]
		}
		if !nameRE.MatchString(name) {
			return nil, fmt.Errorf("ordering by %q, which is not a column name", strings.TrimSpace(item))
		}
		cols = append(cols, name)
	}
	return cols, nil
}

// depth is the parenthesis depth at the end of s (quotes ignored: the
// queries this reads have no parentheses in their string literals).
func depth(s string) int {
	return strings.Count(s, "(") - strings.Count(s, ")")
}
