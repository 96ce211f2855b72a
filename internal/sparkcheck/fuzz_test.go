package sparkcheck

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzCompare reads arbitrary part files: reading fails or gives a table,
// never a panic, and a table equals itself in every mode.
func FuzzCompare(f *testing.F) {
	for _, d := range []string{"ordered1", "sums7", "empty"} {
		files, _ := filepath.Glob(filepath.Join("testdata", d, "part-*.csv"))
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Add([]byte("a,b\n1,\"x\"\"y\"\n1e3,-0\nNaN,\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "part-00000.csv"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		table, err := ReadCSVDir(dir)
		if err != nil {
			return
		}
		for _, o := range []Options{{}, {Unordered: true}, {Order: table.Header[:1]}} {
			if err := Compare(table, table, o); err != nil {
				t.Fatalf("a table differs from itself (%+v): %v", o, err)
			}
		}
	})
}

// FuzzOrderColumns: any query text gives columns or an error, never a
// panic.
func FuzzOrderColumns(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "examples", "spark", "jobs", "tpch", "q*.sql"))
	if len(files) == 0 {
		f.Fatal("no TPC-H queries to start from")
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, q string) {
		cols, err := OrderColumns(q)
		if err == nil {
			for _, c := range cols {
				if !nameRE.MatchString(c) {
					t.Fatalf("column %q from %q", c, q)
				}
			}
		}
	})
}
