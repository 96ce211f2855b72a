package jvmtest

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
)

// pysparkVersion is the version scripts/pyspark-requirements.txt pins.
const pysparkVersion = "3.5.9"

// pysparkDir is the pip target directory scripts/setup.sh fills.
func pysparkDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("VEIL_PYSPARK_DIR")
	if dir == "" {
		dir = "/var/cache/veil/pip/pyspark-" + pysparkVersion
	}
	if _, err := os.Stat(dir + "/pyspark-" + pysparkVersion + ".dist-info"); err != nil {
		veiltest.Skip(t, "needs pyspark %s in %s (scripts/setup.sh installs it)", pysparkVersion, dir)
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		veiltest.Skip(t, "needs the Debian package python3")
	}
	return dir
}

// sparkJob sums in the JVM, shuffles (lz4-java's native library unpacked
// into /tmp and loaded from there) and maps in Python worker processes.
const sparkJob = `import os, time
t0 = time.time()
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").appName("veil-local")
         .config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "512m")
         .config("spark.sql.shuffle.partitions", "4")
         .getOrCreate())
total = spark.range(1000).selectExpr("sum(id) AS s").collect()[0]["s"]
print(f"sum={total} spark={spark.version}", flush=True)
rows = spark.range(100000).selectExpr("id % 10 AS k").groupBy("k").count().collect()
print(f"groups={len(rows)} rows={sum(r['count'] for r in rows)}", flush=True)
squares = spark.sparkContext.parallelize(range(1000), 4).map(lambda x: x * x).sum()
print(f"python squares={squares}", flush=True)
print("lz4 native:", any(f.startswith("liblz4-java") for f in os.listdir("/tmp")), flush=True)
print(f"seconds={time.time()-t0:.1f}", flush=True)
spark.stop()
`

// TestSparkLocal runs a pyspark job in local mode (two task threads) inside
// veil run: Python
// from debian/python3, the JVM from debian/openjdk-17, pyspark as a pip
// target directory (bom.python_packages). The driver's JVM is started by
// pyspark's shell launcher and talks to Python over loopback, inside the
// sandbox's own network namespace.
func TestSparkLocal(t *testing.T) {
	if testing.Short() {
		t.Skip("about a minute on two cores")
	}
	needJVM(t)
	site := pysparkDir(t)
	e := newEnv(t)
	app, took := e.instance(map[string]any{
		"entrypoints": []string{"/usr/bin/python3"},
		"env": map[string]any{"default": map[string]string{
			"PATH": "/usr/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
			"PYTHONPATH": "/usr/lib/python3/veil-site",
			"JAVA_HOME":  jre,
			// The sandbox has only a loopback interface.
			"SPARK_LOCAL_IP": "127.0.0.1",
		}, "passthrough": []string{}},
		"mounts":    []any{map[string]any{"target": "/tmp", "type": "tmpfs", "size": "512M"}},
		"resources": map[string]any{"memory": "3G", "max_processes": 512},
		"bom": map[string]any{
			"include": []string{"debian/python3", "debian/openjdk-17"},
			// pyspark's launcher scripts (bin/spark-submit, spark-class)
			// and Spark's clean-up run these.
			"copy":            []any{map[string]any{"from": "/usr/bin/bash"}, map[string]any{"from": "/usr/bin/env"}, map[string]any{"from": "/usr/bin/dirname"}, map[string]any{"from": "/usr/bin/rm"}},
			"python_packages": []any{map[string]any{"from": site}},
			// Only what Debian's packages put there: a stray
			// /usr/lib/python3.11/dist-packages on the build host would
			// shadow pyspark's optional imports (numpy).
			"exclude": []string{"__pycache__", "*.pyc", "/usr/lib/python3.11/dist-packages"},
		},
	}, map[string]string{
		"app/job.py": sparkJob,
		// The JVM resolves the sandbox's host name (veil) and takes
		// user.home from the password database, not from HOME.
		"etc/hosts":  "127.0.0.1\tlocalhost veil\n::1\tlocalhost\n",
		"etc/passwd": "root:x:0:0:root:/tmp:/usr/sbin/nologin\n",
	})
	size(t, app)
	t.Logf("build of the Spark instance: %v", took.Round(time.Millisecond))

	start := time.Now()
	r := e.must("run", "-C", app, "/usr/bin/python3", "/app/job.py")
	t.Logf("veil run job.py: %v; the job printed:\n%s", time.Since(start).Round(time.Millisecond), r.Stdout)
	for _, want := range []string{"sum=499500 spark=" + pysparkVersion + "\n", "groups=10 rows=100000\n", "python squares=332833500\n", "lz4 native: True\n"} {
		if !strings.Contains(r.Stdout, want) {
			t.Fatalf("the Spark job's output lacks %q:\n%s\n%s", want, r.Stdout, r.Stderr)
		}
	}
}
