package sparkcluster

import (
	"bytes"
	"context"
	"fmt"
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
//   - a worker started while the key service is down reports each failed
//     try and, after veil's default bound of three tries, ends with an
//     error naming the key service, before any JVM; a worker started with
//     a longer bound (veil run --kms-tries 60) keeps trying, and starts
//     and registers once the service is back;
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
//
// The four jobs run in one Spark application (examples/spark/jobs/batch.py
// runs the job files unchanged one after the other), as do the plaintext
// runs, so that the drivers' and executors' start-up is paid once; the
// images build, and the roles start, side by side.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("a Spark cluster: minutes on two cores")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import numpy").Run(); err != nil {
		veiltest.Skip(t, "needs the Debian package python3-numpy (the people generator)")
	}
	ph := newPhases(t)
	var teardown time.Time
	t.Cleanup(func() {
		if !teardown.IsZero() {
			ph.done("teardown (stop roles, unmount, delete namespaces and files)", teardown)
		}
	})
	c := New(t, veil, 2, "rogue")
	t.Cleanup(func() { teardown = time.Now() })
	ph.done("hosts, key services, owners enrolled (New)", ph.start)
	ex := ExampleDir()

	// Both images build in the background, beside each other and the data.
	bstart := time.Now()
	buildSpark := c.BuildAsync("spark", nil)
	buildRogue := c.BuildAsync("rogue", map[string]string{"opt/spark/extra.txt": "a changed image\n"})
	pstart := time.Now()

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
	ph.done("input data generated and sealed (people, parties, TPC-H SF 0.1)", pstart)

	// The plaintext runs, outside veil, while the cluster comes up: the
	// same job files in one local Spark application (jobs/batch.py).
	plainOut := filepath.Join(c.Work, "owner", "plain-out")
	plainTPCH := filepath.Join(c.Work, "owner", "plain-tpch")
	plainMP := filepath.Join(c.Work, "owner", "plain-mp")
	type result struct {
		out []byte
		err error
	}
	plainDone := make(chan result, 1)
	go func() {
		pstart := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		out, err := Plain(ctx, c.Pyspark, filepath.Join(ex, "jobs", "batch.py"),
			"people_query", plainIn, plainOut, "--",
			"tpch", "--data", tpchPlain, "--format", "parquet", "--out", plainTPCH, "--queries", tpchQueries, "--",
			"multi_party", partyA, partyB, plainMP)
		ph.done("plaintext reference runs (beside what follows)", pstart)
		plainDone <- result{out, err}
	}()

	inst, took := buildSpark()
	t.Logf("veil build of the Spark instance: %v, measurement %s", took.Round(time.Millisecond), c.Measurement(inst))
	rogue, took := buildRogue()
	t.Logf("veil build of the rogue instance: %v", took.Round(time.Millisecond))
	ph.done("image builds, spark and rogue (beside each other and the data)", bstart)
	c.Allow(inst)

	// The master first: once its JVM runs, its veil has its secret and
	// keys, and the key service can go down.
	clusterStart := time.Now()
	master := c.Start("master", inst, "master")
	mm := watch(master, `Started daemon`, `Starting Spark master at`)
	master.WaitLog(`Started daemon`, 3*time.Minute)

	// The key service is down when a worker starts. With veil's default
	// bound the worker tries three times, saying so, then names the key
	// service and ends before any JVM.
	pstart = time.Now()
	c.StopKMS()
	w := c.Start("worker1", inst, "worker", c.MasterURL())
	werr := w.Wait(time.Minute)
	t.Logf("worker with the key service down: ended after %v: %v", time.Since(pstart).Round(time.Millisecond), werr)
	out := w.Output()
	tries := regexp.MustCompile(`(?m)^veil: kms owner at \S+: try (\d+) of 3 failed .*; trying again in`).FindAllStringSubmatch(out, -1)
	if werr == nil || !regexp.MustCompile(`(?i)key service.*owner|owner.*key service`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^veil: error: key service unreachable: kms owner at \S+ after 3 tries`).MatchString(out) ||
		len(tries) != 2 || tries[0][1] != "1" || tries[1][1] != "2" || strings.Contains(out, "Starting Spark worker") {
		t.Fatalf("a worker with its key service down: %v, want two failed tries reported, then an error naming the key service after 3 tries, and no JVM:\n%s", werr, out)
	}
	t.Logf("its output:\n%s", out)
	// With a longer bound (--kms-tries 60, about two minutes) the worker
	// keeps trying; the key service comes back after its first failed
	// try, and the worker starts: it is the cluster's worker1.
	w1 := c.StartWith("worker1", inst, []string{"--kms-tries", "60"}, "worker", c.MasterURL())
	w1.WaitLog(`(?m)^veil: kms owner at \S+: try 1 of 60 failed`, time.Minute)
	c.StartKMS()
	ph.done("key service down: a worker refused after 3 tries, another waits", pstart)
	w2 := c.Start("worker2", inst, "worker", c.MasterURL())
	// A worker from a changed image.
	rw := c.Start("rogue", rogue, "worker", c.MasterURL())
	wm1 := watch(w1, `Started daemon`, `Successfully registered with master`)
	wm2 := watch(w2, `Started daemon`, `Successfully registered with master`)
	master.WaitLog(`Starting Spark master at spark://`+regexp.QuoteMeta(c.Net.Host("master").IP), 3*time.Minute)
	ph.done(fmt.Sprintf("master up (JVM at %.1f s)", mm.at(`Started daemon`)), clusterStart)

	// The jobs, from the driver's host, in one Spark application (one
	// driver and executor start-up; jobs/batch.py runs the job files as
	// they are): the people query; the multi-party query (A's input at
	// /data, B's at /party-b, the result at /joint, sealed for A's and
	// B's keys); TPC-H, with worker2 killed once it runs a task of it;
	// the people query on a tampered input, which must fail. The driver
	// starts while the workers register.
	jobStart := time.Now()
	d := c.Start("driver", inst, "driver", c.MasterURL(), "batch",
		"people_query", "/data/in/people.csv", "/data/out/people", "--",
		"multi_party", "/data/in/party-a.csv", "/party-b/incomes.csv", "/joint/out", "--",
		"tpch", "--data", "/data/tpch", "--format", "parquet", "--out", "/data/out/tpch", "--queries", tpchQueries, "--",
		"people_query", "/data/in/tampered.csv", "/data/out/tampered")
	dm := watch(d, append(append(driverMarks, batchMarks...), tpchDone)...)

	w1.WaitLog(`Successfully registered with master`, 3*time.Minute)
	w2.WaitLog(`Successfully registered with master`, 3*time.Minute)
	ph.done(fmt.Sprintf("workers registered (JVM at %.1f/%.1f s, registered at %.1f/%.1f s)",
		wm1.at(`Started daemon`), wm2.at(`Started daemon`), wm1.at(`Successfully registered with master`), wm2.at(`Successfully registered with master`)), clusterStart)
	t.Logf("cluster up (master and two workers attested and registered): %v", time.Since(clusterStart).Round(time.Millisecond))
	n := len(regexp.MustCompile(`(?m)^veil: kms owner at \S+: try \d+ of 60 failed`).FindAllString(w1.Output(), -1))
	if n < 1 || n >= 60 || strings.Contains(w1.Output(), "veil: error:") {
		t.Fatalf("worker1 reported %d failed tries of 60, want at least 1 and fewer than 60, and no error:\n%s", n, w1.Output())
	}
	t.Logf("worker1 started after %d failed tries of the key service (bound 60)", n)

	rerr := rw.Wait(time.Minute)
	if rerr == nil || !strings.Contains(rw.Output(), "veil: error:") || strings.Contains(rw.Output(), "Starting Spark worker") {
		t.Fatalf("the rogue worker: %v, want a refusal before any JVM:\n%s", rerr, rw.Output())
	}
	t.Logf("the rogue worker was refused: %s", lastLine(rw.Output()))

	// TPC-H, with worker2 killed once it runs a task.
	d.waitLogAfter(t, "batch: 3 tpch start", `Starting task .*\(`+regexp.QuoteMeta(c.Net.Host("worker2").IP)+`, executor`, 10*time.Minute)
	if !w2.Kill(30 * time.Second) {
		t.Fatal("worker2's veil did not end within 30 s of SIGKILL")
	}
	if !d.Running() || strings.Contains(d.Output(), "batch: 3 tpch done") {
		t.Fatal("the TPC-H job had ended before worker2 was killed")
	}
	killed := time.Now()
	t.Logf("killed worker2's veil %.1f s into the TPC-H job", killed.Sub(jobStart).Seconds()-dm.at(batchMarks[2]))
	derr := d.Wait(15 * time.Minute)
	dEnd := time.Since(jobStart).Seconds()
	dout := d.Output()
	ph.done("batch driver, veil run to its end "+dm.driver(), jobStart)
	for i, job := range []string{"1 people_query", "2 multi_party", "3 tpch"} {
		m := regexp.MustCompile(`batch: ` + job + ` done (\S+)`).FindStringSubmatch(dout)
		if m == nil {
			t.Fatalf("job %s failed (the driver: %v): %s", job, derr,
				regexp.MustCompile(`batch: `+job+` .*`).FindAllString(dout, -1))
		}
		ph.took(fmt.Sprintf("job %s (started %.1f s after the driver)", job, dm.at(batchMarks[i])), m[1])
	}
	ph.took("TPC-H from the kill to the job's end", fmt.Sprint(dm.at(tpchDone)-killed.Sub(jobStart).Seconds()))
	tpchOut := section(dout, "batch: 3 tpch start", "batch: 3 tpch done")
	t.Logf("TPC-H %s at SF 0.1 on the cluster (a worker killed): %s", tpchQueries,
		strings.Join(regexp.MustCompile(`(?m)^tpch \S+ \S+$`).FindAllString(tpchOut, -1), ", "))
	if !regexp.MustCompile(`(?i)lost executor|executor.*lost|Removing executor`).MatchString(tpchOut) {
		t.Errorf("the driver never noticed the lost executor")
	}
	if m := Mounted("run/r-" + strconv.Itoa(w2.Cmd.Process.Pid)); len(m) > 0 {
		t.Errorf("mounts left for the killed worker: %v", m)
	}

	// A tampered sealed input fails the job, naming the file.
	if derr == nil || !strings.Contains(dout, "batch: 4 people_query failed") {
		t.Fatalf("the job on a tampered input did not fail (the driver: %v): %s", derr,
			regexp.MustCompile(`batch: 4 .*`).FindAllString(dout, -1))
	}
	ph.took(fmt.Sprintf("job 4 people_query on a tampered input to the driver's end (started %.1f s after the driver)", dm.at(batchMarks[3])),
		fmt.Sprint(dEnd-dm.at(batchMarks[3])))
	// Spark reports the read error (EIO); the worker's veil, whose sealed
	// mount refused the block, names the mount and the file in it.
	if !strings.Contains(section(dout, "batch: 4 people_query start", ""), "Input/output error") {
		t.Errorf("the driver does not report the read error")
	}
	if !regexp.MustCompile(`"msg":"sealed file failed its integrity check","mount":"/data","file":"/in/tampered.csv"`).MatchString(w1.Output()) {
		t.Errorf("the worker's log does not name the tampered file")
	}
	if p, _ := filepath.Glob(filepath.Join(c.Shared, "out", "tampered", "part-*")); len(p) > 0 {
		t.Errorf("part files of the failed job: %v", p)
	}

	pstart = time.Now()
	pr := <-plainDone
	ph.done("waiting for the plaintext runs", pstart)
	pstart = time.Now()
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

	ph.done("results decrypted and compared", pstart)

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
