package validate

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"sigs.k8s.io/yaml"
)

const chartDir = "../helm/veil-kms"

// object is one rendered object and where it came from.
type object struct {
	source string
	obj    map[string]any
}

func (o object) String() string {
	md, _ := o.obj["metadata"].(map[string]any)
	return fmt.Sprintf("%s %v/%v %v", o.source, o.obj["apiVersion"], o.obj["kind"], md["name"])
}

// render renders the chart as `helm install` would with vals.
func render(t *testing.T, release, namespace string, vals map[string]any) ([]object, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{
		Name: release, Namespace: namespace, Revision: 1, IsInstall: true,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var objs []object
	for _, n := range names {
		if !strings.HasSuffix(n, ".yaml") {
			continue // NOTES.txt, helpers
		}
		docs, err := decode(n, files[n])
		if err != nil {
			return nil, err
		}
		objs = append(objs, docs...)
	}
	return objs, nil
}

// decode splits a YAML stream into objects.
func decode(source, text string) ([]object, error) {
	var objs []object
	manifests := releaseutil.SplitManifests(text)
	keys := make([]string, 0, len(manifests))
	for k := range manifests {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	for _, k := range keys {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(manifests[k]), &obj); err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		if len(obj) == 0 {
			continue
		}
		objs = append(objs, object{source, obj})
	}
	return objs, nil
}

// namespace creates a namespace for real (dry-run objects need theirs).
func namespace(t *testing.T, s *apiServer, name string) {
	t.Helper()
	err := s.create(map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name}}, "", false)
	if err != nil && !strings.HasPrefix(err.Error(), "409") {
		t.Fatal(err)
	}
}

// createForReal lists the kinds created for real after their dry run: what later
// objects refer to and admission checks (namespaces, runtime classes,
// CRDs).
var createForReal = map[string]bool{"Namespace": true, "RuntimeClass": true, "CustomResourceDefinition": true}

// apply validates every object with a strict server-side dry run.
func apply(t *testing.T, s *apiServer, ns string, objs []object) {
	t.Helper()
	if len(objs) == 0 {
		t.Fatal("nothing to validate")
	}
	for _, o := range objs {
		if err := s.create(o.obj, ns, true); err != nil {
			t.Errorf("%s: %v", o, err)
			continue
		}
		if createForReal[o.obj["kind"].(string)] {
			if err := s.create(o.obj, ns, false); err != nil && !strings.HasPrefix(err.Error(), "409") {
				t.Errorf("%s: %v", o, err)
			}
		}
		t.Logf("valid: %s", o)
	}
}

// certManagerCRD installs a minimal CustomResourceDefinition for
// cert-manager's Certificate: only the fields the chart writes, with their
// types, so strict validation catches a misspelt or misplaced field. It is
// not cert-manager's own schema.
func certManagerCRD(t *testing.T, s *apiServer) {
	t.Helper()
	objs, err := decode("testdata/certificate-crd.yaml", mustRead(t, "testdata/certificate-crd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	apply(t, s, "", objs)
	// Bounded wait until the new API is served.
	for i := 0; ; i++ {
		s.forget("cert-manager.io/v1")
		if _, err := s.resource("cert-manager.io/v1", "Certificate"); err == nil {
			return
		} else if i == 60 {
			t.Fatalf("the Certificate CRD is not served: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// valueSets are the chart configurations validated: the defaults, an HA
// deployment over PostgreSQL with cert-manager, and a single service in a
// confidential VM with every optional input.
var valueSets = []struct {
	name  string
	vals  string
	kinds []string // the kinds the rendering must hold
}{
	{"embedded-defaults", `
tls: {existingSecret: veil-kms-tls}
`, []string{"StatefulSet", "Service", "PodDisruptionBudget", "ServiceAccount"}},
	{"postgres-ha-cert-manager", `
store: {type: postgres, postgres: {existingSecret: veil-kms-postgres}}
replicas: 3
tls: {certManager: {enabled: true, issuerRef: {name: veil-ca}, extraDNSNames: [kms.example.com]}}
adminClientCA: {existingSecret: veil-kms-admin-ca}
attestation: {collateralConfigMap: veil-pcs-collateral}
service: {type: LoadBalancer, annotations: {service.beta.kubernetes.io/aws-load-balancer-internal: "true"}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: DoNotSchedule
    labelSelector: {matchLabels: {app.kubernetes.io/name: veil-kms}}
`, []string{"Deployment", "Certificate", "Service", "PodDisruptionBudget"}},
	{"embedded-confidential-vm", `
image: {repository: registry.example.com/veil/veil, digest: "sha256:1111111111111111111111111111111111111111111111111111111111111111"}
tls: {existingSecret: veil-kms-tls}
attestation: {attest: true, simCA: {existingSecret: veil-sim-ca}}
runtimeClassName: kata-qemu-snp
nodeSelector: {amd.feature.node.kubernetes.io/snp: "true"}
tolerations: [{key: confidential, operator: Exists, effect: NoSchedule}]
store: {embedded: {size: 5Gi, storageClassName: fast-ssd}}
metrics: {scrapeAnnotations: false}
serviceAccount: {create: false, name: default}
podDisruptionBudget: {enabled: false}
logLevel: debug
`, []string{"StatefulSet", "Service"}},
}

func parseVals(t *testing.T, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestChart renders the chart for each value set and validates every
// object against the API server.
func TestChart(t *testing.T) {
	s := getServer(t)
	certManagerCRD(t, s)
	for i, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			ns := fmt.Sprintf("chart-%d", i)
			namespace(t, s, ns)
			objs, err := render(t, "veil-kms", ns, parseVals(t, vs.vals))
			if err != nil {
				t.Fatalf("rendering: %v", err)
			}
			have := map[string]bool{}
			for _, o := range objs {
				have[o.obj["kind"].(string)] = true
			}
			for _, k := range vs.kinds {
				if !have[k] {
					t.Errorf("the rendering has no %s", k)
				}
			}
			apply(t, s, ns, objs)
		})
	}
}

// TestChartRefusesBadValues: values the chart cannot honour stop the
// rendering with a message, before anything reaches a cluster.
func TestChartRefusesBadValues(t *testing.T) {
	for _, c := range []struct{ vals, want string }{
		{`{}`, "tls.existingSecret is required"},
		{`{tls: {existingSecret: x}, store: {type: mysql}}`, "/store/type"},
		{`{tls: {existingSecret: x}, store: {type: postgres}}`, "store.postgres.existingSecret is required"},
		{`{tls: {certManager: {enabled: true}}}`, "issuerRef.name is required"},
		{`{tls: {existingSecret: x}, image: {digest: latest}}`, "/image/digest"},
	} {
		_, err := render(t, "veil-kms", "default", parseVals(t, c.vals))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("values %s: %v, want an error naming %q", c.vals, err, c.want)
		}
	}
}

// TestManifests validates deploy/k8s: the confidential-VM runtime classes,
// the instance Job, the Spark driver and executor pod templates, the FUSE
// device plugin, the key service's client ConfigMap and the service
// accounts.
func TestManifests(t *testing.T) {
	s := getServer(t)
	// Namespaces and runtime classes first: the rest refer to them.
	files, _ := filepath.Glob("../k8s/*.yaml")
	sort.Slice(files, func(i, j int) bool { return rank(files[i]) < rank(files[j]) })
	if len(files) < 7 {
		t.Fatalf("deploy/k8s has %d manifests", len(files))
	}
	for _, f := range files {
		objs, err := decode(filepath.Base(f), mustRead(t, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			// Spark's pod templates are partial pods: Spark names them.
			if md, _ := o.obj["metadata"].(map[string]any); md != nil && md["name"] == nil {
				md["generateName"] = "template-"
			}
		}
		apply(t, s, "default", objs)
	}
}

func rank(f string) string {
	switch filepath.Base(f) {
	case "namespace.yaml":
		return "0"
	case "runtimeclass.yaml":
		return "1"
	}
	return "2" + f
}

// TestBrokenObjectsRefused proves the check bites: an unknown field, a
// missing required field, a wrong API version, a kind that does not exist
// and a misspelt field in a rendered chart object are each refused.
func TestBrokenObjectsRefused(t *testing.T) {
	s := getServer(t)
	namespace(t, s, "broken")
	objs, err := render(t, "veil-kms", "broken", parseVals(t, `{tls: {existingSecret: x}}`))
	if err != nil {
		t.Fatal(err)
	}
	var sts map[string]any
	for _, o := range objs {
		if o.obj["kind"] == "StatefulSet" {
			sts = o.obj
		}
	}
	if sts == nil {
		t.Fatal("no StatefulSet rendered")
	}
	deployment := func() map[string]any {
		return parseVals(t, `
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: c, image: busybox}]}
`)
	}
	if err := s.create(deployment(), "broken", true); err != nil {
		t.Fatalf("the valid control object was refused: %v", err)
	}
	cases := []struct {
		name string
		edit func(map[string]any) map[string]any
		want string
	}{
		{"unknown field", func(o map[string]any) map[string]any {
			o["spec"].(map[string]any)["bogus"] = true
			return o
		}, `unknown field "spec.bogus"`},
		{"missing selector", func(o map[string]any) map[string]any {
			delete(o["spec"].(map[string]any), "selector")
			return o
		}, "spec.selector: Required value"},
		{"wrong API version", func(o map[string]any) map[string]any {
			o["apiVersion"] = "apps/v1beta1"
			return o
		}, "not served"},
		{"unknown kind", func(o map[string]any) map[string]any {
			o["kind"] = "Deploymnet"
			return o
		}, "not served"},
		{"misspelt probe in the chart's StatefulSet", func(map[string]any) map[string]any {
			c := sts["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
			c["readinesProbe"] = c["readinessProbe"]
			delete(c, "readinessProbe")
			return sts
		}, `unknown field "spec.template.spec.containers[0].readinesProbe"`},
		{"wrong type in the chart's StatefulSet", func(map[string]any) map[string]any {
			sts["spec"].(map[string]any)["replicas"] = "one"
			return sts
		}, "replicas"},
	}
	for _, c := range cases {
		err := s.create(c.edit(deployment()), "broken", true)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		} else {
			t.Logf("%s refused: %v", c.name, err)
		}
	}
}
