package sparkcluster

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/sparkcheck"
	"github.com/veil-tee/veil/internal/veiltest"
)

var veil string

func TestMain(m *testing.M) { veiltest.Main(m, &veil) }

// peopleRows is the size of the people query's input.
const peopleRows = 50000

// partyRows is the size of party A's table in the multi-party query.
const partyRows = 20000

// tpchQueries are the TPC-H queries the test runs at scale factor 0.1.
const tpchQueries = "1,3,6"

// TestCluster runs a Spark standalone cluster of veil instances on six
// hosts (key service, owner, master, two workers, driver) plus a rogue
// host, and checks, in one cluster to keep within the time budget:
//
//   - a worker started while the key service is down fails with an error
//     naming the key service, within a bound (veil's three connection
//     attempts), and starts once the service is back;
//   - a worker built from a changed image (its measurement not in the
//     policy) gets no secret, never starts a JVM and never registers;
//   - the people query (examples/spark/jobs/people_query.py), submitted
//     from the driver's host: its sealed part files, decrypted by the
//     owner, hold the same rows as the same file run on the plaintext in
//     local mode outside veil;
//   - the multi-party query (examples/spark/jobs/multi_party.py): party
//     A's people sealed under A's key (key service on kms), party B's
//     incomes under B's key (key service on kmsb), each unreadable by
//     the other party; the joined result, written once through a mount
//     that seals for both keys, decrypted by each party with its own key
//     service, equals the same file run on the plaintext in local mode;
//   - TPC-H Q1, Q3 and Q6 at scale factor 0.1 (examples/spark/jobs/tpch.py
//     over sealed Parquet) survive the kill -9 of a worker's veil process
//     in the middle of the job: the results equal the plaintext run's, and
//     nothing stays mounted for the killed worker;
//   - a sealed input tampered with on the shared storage fails the job
//     (Spark reports the I/O error; the worker's veil names the file and
//     the block that failed), and no part file appears.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a Spark cluster: minutes on two cores")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import numpy").Run(); err != nil {
		veiltest.Skip(t, "needs the Debian package python3-numpy (the people generator)")
	}
	c := New(t, veil, 2, "rogue")
	ex := ExampleDir()
	job := filepath.Join(ex, "jobs", "people_query.py")

	// The owner's data: people.csv, sealed onto the shared storage, and
	// a tampered copy (one byte of its body flipped).
	plainIn := filepath.Join(c.Work, "owner", "people.csv")
	if out, err := exec.Command("/usr/bin/python3", filepath.Join(ex, "..", "people", "gen_people.py"),
		"--rows", strconv.Itoa(peopleRows), plainIn).CombinedOutput(); err != nil {
		t.Fatalf("gen_people.py: %v\n%s", err, out)
	}
	c.Seal(plainIn, "in/people.csv")
	sealed, err := os.ReadFile(filepath.Join(c.Shared, "in", "people.csv"))
	if err != nil {
		t.Fatal(err)
	}
	sealed[len(sealed)/2] ^= 0x40
	writeFile(t, filepath.Join(c.Shared, "in", "tampered.csv"), sealed, 0o644)
	// The two parties' tables, each sealed by its owner under its key.
	partyA, partyB := filepath.Join(c.Work, "owner", "party-a.csv"), filepath.Join(c.Work, "owner", "party-b.csv")
	if out, err := exec.Command("/usr/bin/python3", filepath.Join(ex, "..", "multi-party", "gen_parties.py"),
		"--rows", strconv.Itoa(partyRows), partyA, partyB).CombinedOutput(); err != nil {
		t.Fatalf("gen_parties.py: %v\n%s", err, out)
	}
	c.Seal(partyA, "in/party-a.csv")
	c.OwnerB("", "encrypt", "--key", "kms:"+c.KeyBID, "-i", partyB, "-o", filepath.Join(c.SharedB, "incomes.csv"))
	// Neither party can open the other's input.
	if out, err := c.OwnerBTry("decrypt", "-i", filepath.Join(c.Shared, "in", "party-a.csv"), "-o", filepath.Join(c.Work, "owner", "stolen-a")); err == nil {
		t.Fatalf("party B decrypted party A's input:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(c.Work, "owner", "stolen-a")); err == nil {
		t.Error("party B's failed decrypt left a file")
	}
	// TPC-H at SF 0.1 as Parquet, sealed as a tree.
	tpchPlain := tpchGen(t, filepath.Join(c.Work, "owner", "tpch"))
	c.Owner("", "encrypt", "--key", "kms:"+c.KeyID, "-i", tpchPlain, "-o", filepath.Join(c.Shared, "tpch"))
	c.GiveShared()

	// The plaintext run, outside veil, while the cluster comes up.
	plainOut := filepath.Join(c.Work, "owner", "plain-out")
	plainTPCH := filepath.Join(c.Work, "owner", "plain-tpch")
	plainMP := filepath.Join(c.Work, "owner", "plain-mp")
	type result struct {
		out []byte
		err error
	}
	plainDone := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		out, err := Plain(ctx, c.Pyspark, job, plainIn, plainOut)
		if err == nil {
			var o []byte
			o, err = Plain(ctx, c.Pyspark, filepath.Join(ex, "jobs", "tpch.py"),
				"--data", tpchPlain, "--format", "parquet", "--out", plainTPCH, "--queries", tpchQueries)
			out = append(out, o...)
		}
		if err == nil {
			var o []byte
			o, err = Plain(ctx, c.Pyspark, filepath.Join(ex, "jobs", "multi_party.py"), partyA, partyB, plainMP)
			out = append(out, o...)
		}
		plainDone <- result{out, err}
	}()

	inst, took := c.Build("spark", nil)
	t.Logf("veil build of the Spark instance: %v, measurement %s", took.Round(time.Millisecond), c.Measurement(inst))
	rogue, _ := c.Build("rogue", map[string]string{"opt/spark/extra.txt": "a changed image\n"})
	c.Allow(inst)

	// The key service is down when a worker starts.
	c.StopKMS()
	start := time.Now()
	w := c.Start("worker1", inst, "worker", c.MasterURL())
	werr := w.Wait(time.Minute)
	t.Logf("worker with the key service down: ended after %v: %v", time.Since(start).Round(time.Millisecond), werr)
	if werr == nil || !regexp.MustCompile(`(?i)key service.*owner|owner.*key service`).MatchString(w.Output()) ||
		strings.Contains(w.Output(), "Starting Spark worker") {
		t.Fatalf("a worker with its key service down: %v, want an error naming the key service and no JVM:\n%s", werr, w.Output())
	}
	c.StartKMS()

	clusterStart := time.Now()
	master := c.Start("master", inst, "master")
	master.WaitLog(`Starting Spark master at spark://`+regexp.QuoteMeta(c.Net.Host("master").IP), 3*time.Minute)
	w1 := c.Start("worker1", inst, "worker", c.MasterURL())
	w2 := c.Start("worker2", inst, "worker", c.MasterURL())
	w1.WaitLog(`Successfully registered with master`, 3*time.Minute)
	w2.WaitLog(`Successfully registered with master`, 3*time.Minute)
	t.Logf("cluster up (master and two workers attested and registered): %v", time.Since(clusterStart).Round(time.Millisecond))

	// A worker from a changed image.
	rw := c.Start("rogue", rogue, "worker", c.MasterURL())
	rerr := rw.Wait(time.Minute)
	if rerr == nil || !strings.Contains(rw.Output(), "veil: error:") || strings.Contains(rw.Output(), "Starting Spark worker") {
		t.Fatalf("the rogue worker: %v, want a refusal before any JVM:\n%s", rerr, rw.Output())
	}
	t.Logf("the rogue worker was refused: %s", lastLine(rw.Output()))

	// The people query.
	jobStart := time.Now()
	d := c.Start("driver", inst, "driver", c.MasterURL(), "people_query", "/data/in/people.csv", "/data/out/people")
	if err := d.Wait(10 * time.Minute); err != nil {
		t.Fatalf("the people query failed: %v", err)
	}
	t.Logf("people query on the cluster (%d rows): %v", peopleRows, time.Since(jobStart).Round(time.Millisecond))

	// The multi-party query: A's input at /data, B's at /party-b, the
	// result at /joint (sealed for A's and B's keys).
	jobStart = time.Now()
	d = c.Start("driver", inst, "driver", c.MasterURL(), "multi_party", "/data/in/party-a.csv", "/party-b/incomes.csv", "/joint/out")
	if err := d.Wait(10 * time.Minute); err != nil {
		t.Fatalf("the multi-party query failed: %v", err)
	}
	t.Logf("multi-party query on the cluster (%d rows of A): %v", partyRows, time.Since(jobStart).Round(time.Millisecond))

	// TPC-H, with worker2 killed once it runs a task.
	jobStart = time.Now()
	d = c.Start("driver", inst, "driver", c.MasterURL(), "tpch", "--data", "/data/tpch", "--format", "parquet",
		"--out", "/data/out/tpch", "--queries", tpchQueries)
	d.WaitLog(`Starting task .*\(`+regexp.QuoteMeta(c.Net.Host("worker2").IP)+`, executor`, 8*time.Minute)
	if !w2.Kill(30 * time.Second) {
		t.Fatal("worker2's veil did not end within 30 s of SIGKILL")
	}
	if !d.Running() {
		t.Fatal("the job had ended before worker2 was killed")
	}
	t.Logf("killed worker2's veil %v into the TPC-H job", time.Since(jobStart).Round(time.Millisecond))
	if err := d.Wait(10 * time.Minute); err != nil {
		t.Fatalf("TPC-H failed after the kill: %v", err)
	}
	t.Logf("TPC-H %s at SF 0.1 on the cluster (a worker killed): %v; %s", tpchQueries,
		time.Since(jobStart).Round(time.Millisecond), strings.Join(regexp.MustCompile(`(?m)^tpch \S+ \S+$`).FindAllString(d.Output(), -1), ", "))
	if !regexp.MustCompile(`(?i)lost executor|executor.*lost|Removing executor`).MatchString(d.Output()) {
		t.Errorf("the driver never noticed the lost executor")
	}
	if m := Mounted("run/r-" + strconv.Itoa(w2.Cmd.Process.Pid)); len(m) > 0 {
		t.Errorf("mounts left for the killed worker: %v", m)
	}

	pr := <-plainDone
	if pr.err != nil {
		t.Fatalf("the plaintext run: %v\n%s", pr.err, pr.out)
	}
	parts, _ := filepath.Glob(filepath.Join(c.Shared, "out", "people", "part-*.csv"))
	if len(parts) == 0 {
		t.Fatal("the cluster wrote no part files")
	}
	var got []byte
	for i, p := range parts {
		dec := filepath.Join(c.Work, "owner", "veil-part-"+strconv.Itoa(i)+".csv")
		c.Decrypt(p, dec)
		b, err := os.ReadFile(dec)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, b...)
	}
	plainParts, _ := filepath.Glob(filepath.Join(plainOut, "part-*.csv"))
	var want []byte
	for _, p := range plainParts {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, b...)
	}
	gotRows, wantRows := rows(got), rows(want)
	if len(wantRows) != 10 || !slices.Equal(gotRows, wantRows) {
		t.Fatalf("the cluster's result differs from the plaintext run's:\n--- cluster\n%s\n--- plaintext\n%s",
			strings.Join(gotRows, "\n"), strings.Join(wantRows, "\n"))
	}
	t.Logf("result (%d part files) equals the plaintext run's: %s", len(parts), strings.Join(gotRows, " "))

	// Each party decrypts the one joined result with its own key service.
	mpParts, _ := filepath.Glob(filepath.Join(c.Joint, "out", "part-*.csv"))
	wantMP, _ := filepath.Glob(filepath.Join(plainMP, "part-*.csv"))
	if len(mpParts) != 1 || len(wantMP) != 1 {
		t.Fatalf("multi-party part files: cluster %v, plaintext %v; want one each", mpParts, wantMP)
	}
	want, err = os.ReadFile(wantMP[0])
	if err != nil || bytes.Count(want, []byte("\n")) < 3 {
		t.Fatalf("the plaintext multi-party result: %q (%v)", want, err)
	}
	for _, party := range []struct {
		name    string
		decrypt func(string, ...string) string
	}{{"A", c.Owner}, {"B", c.OwnerB}} {
		dec := filepath.Join(c.Work, "owner", "veil-mp-"+party.name+".csv")
		party.decrypt("", "decrypt", "-i", mpParts[0], "-o", dec)
		b, err := os.ReadFile(dec)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("the multi-party result decrypted by party %s differs from the plaintext run's:\n--- cluster\n%s--- plaintext\n%s", party.name, b, want)
		}
	}
	t.Logf("multi-party result, decrypted by A and by B, equals the plaintext run's (%d lines)", bytes.Count(want, []byte("\n")))
	if out, err := c.OwnerBTry("decrypt", "-i", filepath.Join(c.Shared, "out", "people", filepath.Base(parts[0])), "-o", filepath.Join(c.Work, "owner", "stolen-out")); err == nil {
		t.Errorf("party B decrypted A's people query output:\n%s", out)
	}

	veilTPCH := filepath.Join(c.Work, "owner", "veil-tpch")
	c.Decrypt(filepath.Join(c.Shared, "out", "tpch"), veilTPCH)
	for _, q := range strings.Split(tpchQueries, ",") {
		name := "q" + q
		sql := filepath.Join(ex, "jobs", "tpch", name+".sql")
		if err := sparkcheck.CompareQuery(filepath.Join(plainTPCH, name), filepath.Join(veilTPCH, name), sql); err != nil {
			t.Errorf("TPC-H %s on the cluster differs from the plaintext run: %v", name, err)
		}
		tab, err := sparkcheck.ReadCSVDir(filepath.Join(veilTPCH, name))
		if err != nil || len(tab.Rows) == 0 {
			t.Errorf("TPC-H %s: no rows (%v)", name, err)
		}
	}

	// A tampered sealed input fails the job, naming the file.
	tstart := time.Now()
	d2 := c.Start("driver", inst, "driver", c.MasterURL(), "people_query", "/data/in/tampered.csv", "/data/out/tampered")
	if err := d2.Wait(8 * time.Minute); err == nil {
		t.Fatal("the job on a tampered input succeeded")
	}
	t.Logf("the job on a tampered input failed after %v", time.Since(tstart).Round(time.Millisecond))
	// Spark reports the read error (EIO); the worker's veil, whose sealed
	// mount refused the block, names the mount and the file in it.
	if !strings.Contains(d2.Output(), "Input/output error") {
		t.Errorf("the driver does not report the read error")
	}
	if !regexp.MustCompile(`"msg":"sealed file failed its integrity check","mount":"/data","file":"/in/tampered.csv"`).MatchString(w1.Output()) {
		t.Errorf("the worker's log does not name the tampered file")
	}
	if p, _ := filepath.Glob(filepath.Join(c.Shared, "out", "tampered", "part-*")); len(p) > 0 {
		t.Errorf("part files of the failed job: %v", p)
	}

	// The shared storage holds no plaintext.
	filepath.WalkDir(c.Shared, func(p string, de os.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("Engineer")) {
				t.Errorf("plaintext on the shared storage: %s", p)
			}
		}
		return nil
	})
}

// rows is the sorted data rows of concatenated CSV part files (headers
// dropped).
func rows(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && l != "job,count" {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// tpchGen generates TPC-H at scale factor 0.1 as Parquet into dir with
// scripts/tpch-gen.sh (hard links to the machine's cache: only read).
func tpchGen(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(ExampleDir(), "..", "..")
	req, err := os.ReadFile(filepath.Join(root, "scripts", "tpchgen-requirements.txt"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^tpchgen-cli==(\S+) `).FindSubmatch(req)
	if m == nil {
		t.Fatal("scripts/tpchgen-requirements.txt pins no tpchgen-cli")
	}
	gen := os.Getenv("VEIL_TPCHGEN_DIR")
	if gen == "" {
		gen = "/var/cache/veil/pip/tpchgen-cli-" + string(m[1])
	}
	if _, err := os.Stat(filepath.Join(gen, "bin", "tpchgen-cli")); err != nil {
		veiltest.Skip(t, "needs tpchgen-cli %s in %s (scripts/setup.sh installs it)", m[1], gen)
	}
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "tpch-gen.sh"), "0.1", dir, "parquet")
	cmd.Env = append(os.Environ(), "VEIL_TPCH_LINK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/tpch-gen.sh 0.1: %v\n%s", err, out)
	}
	return dir
}
