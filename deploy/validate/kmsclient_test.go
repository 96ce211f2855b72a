package validate

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestKMSAddressFromConfigMap checks what the API server does not: every
// container that runs a veil instance (the Job, the Spark driver and
// executor) takes the key service's address from the veil-kms-client
// ConfigMap as VEIL_KMS_ADDRESS_<NAME>, and every key a pod reads from
// that ConfigMap exists in it (a missing key keeps the pod from starting).
func TestKMSAddressFromConfigMap(t *testing.T) {
	files, _ := filepath.Glob("../k8s/*.yaml")
	var cmData map[string]any
	type ref struct{ source, env, key string }
	var refs []ref
	instances := map[string]bool{}
	for _, f := range files {
		objs, err := decode(filepath.Base(f), mustRead(t, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			md, _ := o.obj["metadata"].(map[string]any)
			if o.obj["kind"] == "ConfigMap" && md["name"] == "veil-kms-client" {
				cmData, _ = o.obj["data"].(map[string]any)
			}
			for _, c := range containers(o.obj) {
				image, _ := c["image"].(string)
				if !strings.Contains(image, "/veil/") {
					continue
				}
				name := o.String() + " " + c["name"].(string)
				instances[name] = false
				env, _ := c["env"].([]any)
				for _, e := range env {
					e, _ := e.(map[string]any)
					from, _ := e["valueFrom"].(map[string]any)
					cm, _ := from["configMapKeyRef"].(map[string]any)
					if cm["name"] != "veil-kms-client" {
						continue
					}
					r := ref{name, e["name"].(string), cm["key"].(string)}
					refs = append(refs, r)
					if strings.HasPrefix(r.env, "VEIL_KMS_ADDRESS_") && r.key == "kms-address" {
						instances[name] = true
					}
				}
			}
		}
	}
	if cmData == nil {
		t.Fatal("deploy/k8s has no ConfigMap veil-kms-client")
	}
	if len(instances) < 3 {
		t.Fatalf("found %d veil instance containers, want the Job and the Spark driver and executor: %v", len(instances), instances)
	}
	for name, ok := range instances {
		if !ok {
			t.Errorf("%s: no VEIL_KMS_ADDRESS_<NAME> from veil-kms-client's kms-address", name)
		}
	}
	for _, r := range refs {
		if _, ok := cmData[r.key]; !ok {
			t.Errorf("%s: %s reads key %q, which veil-kms-client does not have", r.source, r.env, r.key)
		}
	}
}

// containers returns the containers of a Pod, or of a Job's, Deployment's
// or DaemonSet's pod template.
func containers(obj map[string]any) []map[string]any {
	spec, _ := obj["spec"].(map[string]any)
	if tmpl, ok := spec["template"].(map[string]any); ok {
		spec, _ = tmpl["spec"].(map[string]any)
	}
	list, _ := spec["containers"].([]any)
	var out []map[string]any
	for _, c := range list {
		if m, ok := c.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}
