package examples_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
)

var veilBin string

func TestMain(m *testing.M) { veiltest.Main(m, &veilBin) }

// needPython skips the test unless the Debian interpreter imports every
// module (the instance's BOM copies the same files from the host).
func needPython(t *testing.T, pkg string, modules ...string) {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		veiltest.Skip(t, "needs the Debian package python3")
	}
	for _, m := range modules {
		if err := exec.Command("/usr/bin/python3", "-c", "import "+m).Run(); err != nil {
			veiltest.Skip(t, "needs the Debian package %s (python3 cannot import %s)", pkg, m)
		}
	}
}

func needMachine(t *testing.T) {
	t.Helper()
	veiltest.NeedFUSE(t)
	veiltest.NeedCommand(t, "bash")
}

// runExample runs examples/NAME/run.sh with a fresh WORK directory and
// returns it. The script's output is logged.
func runExample(t *testing.T, name string, env ...string) string {
	t.Helper()
	work := filepath.Join(t.TempDir(), "work")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(name, "run.sh"))
	cmd.Env = append(os.Environ(), append([]string{"VEIL=" + veilBin, "WORK=" + work}, env...)...)
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("%s/run.sh:\n%s", name, out.String())
	if err != nil {
		t.Fatalf("%s/run.sh: %v", name, err)
	}
	leftBehind(t, work)
	return work
}

// leftBehind fails if a mount or a process (a key service, a sandbox) still
// refers to the work directory once the script has ended.
func leftBehind(t *testing.T, work string) {
	t.Helper()
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && bytes.Contains(b, []byte(work)) {
		t.Errorf("mounts left under %s", work)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(work)) {
			t.Errorf("process left running: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readCSV parses a result table, failing on malformed content.
func readCSV(t *testing.T, path string) [][]string {
	t.Helper()
	rows, err := csv.NewReader(bytes.NewReader(readFile(t, path))).ReadAll()
	if err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	if len(rows) < 2 {
		t.Fatalf("%s: %d rows, want a header and data", path, len(rows))
	}
	return rows
}

// sameFile fails unless the decrypted result equals the plaintext run's.
func sameFile(t *testing.T, veil, plain string) {
	t.Helper()
	a, b := readFile(t, veil), readFile(t, plain)
	if !bytes.Equal(a, b) {
		t.Errorf("result inside veil differs from the plaintext run:\n--- veil %s\n%s\n--- plain %s\n%s", veil, a, plain, b)
	}
}

// TestPeople runs the people example, and (but with -short) ships the
// same build as an OCI image: veil package, veil unpack into a fresh root,
// the job run from that root with the key service's address given at run
// time; the owner's decrypted result must be the plaintext run's.
func TestPeople(t *testing.T) {
	needMachine(t)
	needPython(t, "python3-pandas", "pandas")
	const rows = 5000
	packaged := !testing.Short()
	work := runExample(t, "people", "ROWS="+strconv.Itoa(rows), "PACKAGED="+map[bool]string{true: "1", false: "0"}[packaged])
	got := filepath.Join(work, "results/veil/out.csv")
	sameFile(t, got, filepath.Join(work, "results/plain/out.csv"))
	if packaged {
		sameFile(t, filepath.Join(work, "results/packaged/out.csv"), filepath.Join(work, "results/plain/out.csv"))
		// The image holds the instance's build and veil, nothing else.
		size := func(p string) int64 {
			st, err := os.Stat(filepath.Join(work, p))
			if err != nil {
				t.Fatal(err)
			}
			return st.Size()
		}
		img, bin, tar := size("people/build/rootfs.img"), size("host/root/usr/local/bin/veil"), size("people.tar")
		t.Logf("people.tar: %d bytes (image %d, veil %d)", tar, img, bin)
		if tar > img+bin+1<<20 {
			t.Errorf("people.tar is %d bytes, more than the image (%d) and veil (%d)", tar, img, bin)
		}
	}
	// The table itself is plausible: ten jobs, counts summing to the
	// people aged 20 to 40 (about 21/55 of the rows).
	table := readCSV(t, got)
	if h := strings.Join(table[0], ","); h != "job,count" {
		t.Errorf("header %q, want job,count", h)
	}
	sum := 0
	for _, r := range table[1:] {
		n, err := strconv.Atoi(r[1])
		if err != nil {
			t.Fatalf("count %q: %v", r[1], err)
		}
		sum += n
	}
	if len(table)-1 != 10 || sum < rows*30/100 || sum > rows*46/100 {
		t.Errorf("%d jobs, %d people selected of %d: not the query's result", len(table)-1, sum, rows)
	}
	// Outside the TEE the result exists only sealed.
	if bytes.Contains(readFile(t, filepath.Join(work, "host/data/out.csv")), []byte("job,count")) {
		t.Error("the result is in plaintext on the host")
	}
}

func TestSklearn(t *testing.T) {
	needMachine(t)
	needPython(t, "python3-sklearn", "sklearn")
	work := runExample(t, "sklearn")
	got := filepath.Join(work, "results/veil/result.txt")
	sameFile(t, got, filepath.Join(work, "results/plain/result.txt"))
	text := string(readFile(t, got))
	for _, want := range []string{"intercept: w0=", "coef: w1=", "R2_score :", "median_absolute_error:"} {
		if !strings.Contains(text, want) {
			t.Errorf("result lacks %q:\n%s", want, text)
		}
	}
}

func TestMultiParty(t *testing.T) {
	needMachine(t)
	needPython(t, "python3-pandas", "pandas")
	work := runExample(t, "multi-party", "ROWS=3000")
	plain := filepath.Join(work, "results/plain/joined.csv")
	for _, p := range []string{"a", "b"} {
		sameFile(t, filepath.Join(work, "results/veil", p+".csv"), plain)
	}
	if table := readCSV(t, plain); len(table) != 11 {
		t.Errorf("joined result has %d rows, want a header and 10 jobs", len(table))
	}
}

func TestDenied(t *testing.T) {
	needMachine(t)
	needPython(t, "python3-pandas", "pandas")
	work := runExample(t, "denied", "ROWS=500")
	res := string(readFile(t, filepath.Join(work, "results/denied.txt")))
	if !strings.HasPrefix(res, "exit=4\n") {
		t.Errorf("the altered job's run did not exit with 4 (policy not accepted):\n%s", res)
	}
	if _, err := os.Stat(filepath.Join(work, "host/data/out.csv")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the altered program wrote out.csv (stat: %v)", err)
	}
}

func TestPyTorch(t *testing.T) {
	needMachine(t)
	needPython(t, "python3-torch", "torch")
	needPython(t, "python3-sklearn", "sklearn")
	work := runExample(t, "pytorch")
	got := filepath.Join(work, "results/veil/result.txt")
	sameFile(t, got, filepath.Join(work, "results/plain/result.txt"))
	if lines := strings.Count(string(readFile(t, got)), "\n"); lines < 3 {
		t.Errorf("result.txt has %d lines, want the top-3 classes", lines)
	}
}
