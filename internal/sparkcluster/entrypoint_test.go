package sparkcluster

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestEntryPointRefusesHostInput runs examples/spark's entry point (bash,
// outside veil) with the Kubernetes roles' variables, each case valid but
// for one value a hostile host could pass: an extra option, a second
// configuration line, a command. Each stops with exit 2 and
// `veil-entrypoint: NAME ...` before anything is written or started; the
// token and the CA certificate are never echoed.
func TestEntryPointRefusesHostInput(t *testing.T) {
	script := filepath.Join(ExampleDir(), "app", "veil-entrypoint.sh")
	executor := map[string]string{
		"SPARK_DRIVER_URL":          "spark://CoarseGrainedScheduler@10.1.2.3:41234",
		"SPARK_EXECUTOR_ID":         "2",
		"SPARK_EXECUTOR_CORES":      "1",
		"SPARK_EXECUTOR_MEMORY":     "768m",
		"SPARK_APPLICATION_ID":      "spark-0123456789abcdef0123456789abcdef",
		"SPARK_EXECUTOR_POD_IP":     "10.1.2.4",
		"SPARK_EXECUTOR_POD_NAME":   "people-query-0123456789abcdef-exec-2",
		"SPARK_RESOURCE_PROFILE_ID": "0",
	}
	const token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
	driver := map[string]string{
		"SPARK_K8S_NAMESPACE": "veil-jobs",
		"SPARK_K8S_IMAGE":     "registry.example.com/veil/spark@sha256:" + strings.Repeat("0", 64),
		"SPARK_K8S_EXECUTORS": "2",
		"SPARK_K8S_TOKEN":     token,
		"SPARK_K8S_CA_CERT":   "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
	}
	driverArgs := []string{"driver", "10.1.2.5", "k8s://https://10.1.2.1:6443", "people_query"}
	for _, tc := range []struct {
		name string
		args []string
		base map[string]string
		set  map[string]string
		want string
	}{
		{"driver URL with an option", []string{"executor"}, executor,
			map[string]string{"SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.1.2.3:41234 --worker-url x"}, "SPARK_DRIVER_URL is not"},
		{"driver URL elsewhere", []string{"executor"}, executor,
			map[string]string{"SPARK_DRIVER_URL": "spark://Other@10.1.2.3:41234"}, "SPARK_DRIVER_URL is not"},
		{"memory with a JVM option", []string{"executor"}, executor,
			map[string]string{"SPARK_EXECUTOR_MEMORY": "768m -javaagent:/tmp/a.jar"}, "SPARK_EXECUTOR_MEMORY is not"},
		{"pod IP with a command", []string{"executor"}, executor,
			map[string]string{"SPARK_EXECUTOR_POD_IP": "10.1.2.4;id"}, "SPARK_EXECUTOR_POD_IP is not"},
		{"application id over two lines", []string{"executor"}, executor,
			map[string]string{"SPARK_APPLICATION_ID": "spark-1\nspark.jars=/x"}, "SPARK_APPLICATION_ID is not"},
		{"no executor id", []string{"executor"}, executor,
			map[string]string{"SPARK_EXECUTOR_ID": ""}, "SPARK_EXECUTOR_ID is not set"},
		{"executor with arguments", []string{"executor", "--class", "x"}, executor, nil, "executor takes no arguments"},
		{"namespace with a second setting", driverArgs, driver,
			map[string]string{"SPARK_K8S_NAMESPACE": "veil-jobs\nspark.jars /x.jar"}, "SPARK_K8S_NAMESPACE is not"},
		{"image with a second setting", driverArgs, driver,
			map[string]string{"SPARK_K8S_IMAGE": "spark spark.driver.extraClassPath=/x"}, "SPARK_K8S_IMAGE is not"},
		{"executors not a number", driverArgs, driver,
			map[string]string{"SPARK_K8S_EXECUTORS": "2 --conf x"}, "SPARK_K8S_EXECUTORS is not"},
		{"token over two lines", driverArgs, driver,
			map[string]string{"SPARK_K8S_TOKEN": token + "\nx"}, "SPARK_K8S_TOKEN is not"},
		{"CA not PEM", driverArgs, driver,
			map[string]string{"SPARK_K8S_CA_CERT": "-----BEGIN CERTIFICATE-----\n$(id)\n-----END CERTIFICATE-----"}, "SPARK_K8S_CA_CERT is not"},
		{"master with a path", []string{"driver", "10.1.2.5", "k8s://https://10.1.2.1:6443/x", "people_query"}, driver, nil,
			"not a Kubernetes API server"},
		{"another master", []string{"driver", "10.1.2.5", "yarn", "people_query"}, driver, nil, "not a master URL"},
		{"a role over two lines", []string{"executor\nmaster"}, nil, nil, "unknown role"},
		{"a job outside the image", []string{"driver", "10.1.2.5", "spark://10.1.2.2:7077", "../../tmp/x"}, nil, nil, "no job"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("/usr/bin/bash", append([]string{script}, tc.args...)...)
			cmd.Env = []string{"PATH=/usr/bin:/bin", "_SPARK_AUTH_SECRET=00", "SPARK_HOME=/nonexistent", "JAVA_HOME=/nonexistent"}
			for k, v := range tc.base {
				if s, ok := tc.set[k]; ok {
					v = s
				}
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want 2:\n%s", err, out)
			}
			if !strings.HasPrefix(string(out), "veil-entrypoint: ") || !strings.Contains(string(out), tc.want) ||
				strings.Count(string(out), "\n") != 1 {
				t.Errorf("output %q, want one line veil-entrypoint: ...%s...", out, tc.want)
			}
			if strings.Contains(string(out), "eyJ") || strings.Contains(string(out), "BEGIN CERTIFICATE") {
				t.Errorf("the refusal echoes the token or the certificate: %q", out)
			}
		})
	}
}
