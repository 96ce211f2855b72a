package kms

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/veil-tee/veil/kms/store"
)

var httpMethods = []string{"get", "put", "post", "delete", "patch", "head", "options", "trace"}

type openAPIParam struct {
	Ref  string `yaml:"$ref"`
	Name string `yaml:"name"`
	In   string `yaml:"in"`
}

// openAPIRoutes reads api/kms.openapi.yaml and returns its operations as
// "METHOD /path/{param}", checking on the way that every {param} of a path
// is declared as a path parameter.
func openAPIRoutes(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../api/kms.openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI    string `yaml:"openapi"`
		Components struct {
			Parameters map[string]openAPIParam `yaml:"parameters"`
		} `yaml:"components"`
		Paths map[string]map[string]yaml.Node `yaml:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("parsing api/kms.openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") || len(doc.Paths) == 0 {
		t.Fatalf("api/kms.openapi.yaml: openapi %q, %d paths", doc.OpenAPI, len(doc.Paths))
	}
	resolve := func(p openAPIParam) openAPIParam {
		if name, ok := strings.CutPrefix(p.Ref, "#/components/parameters/"); ok {
			r, found := doc.Components.Parameters[name]
			if !found {
				t.Errorf("parameter reference %s names nothing", p.Ref)
			}
			return r
		}
		return p
	}
	wild := regexp.MustCompile(`\{([^}]*)\}`)
	var routes []string
	for path, item := range doc.Paths {
		var pathParams []string
		decode := func(n yaml.Node) {
			var ps []openAPIParam
			if err := n.Decode(&ps); err != nil {
				t.Errorf("%s: parameters: %v", path, err)
			}
			for _, p := range ps {
				if p = resolve(p); p.In == "path" {
					pathParams = append(pathParams, p.Name)
				}
			}
		}
		if n, ok := item["parameters"]; ok {
			decode(n)
		}
		for key, n := range item {
			switch {
			case slices.Contains(httpMethods, key):
				var op struct {
					Parameters yaml.Node `yaml:"parameters"`
				}
				if err := n.Decode(&op); err != nil {
					t.Errorf("%s %s: %v", key, path, err)
				}
				before := len(pathParams)
				if op.Parameters.Kind != 0 {
					decode(op.Parameters)
				}
				for _, m := range wild.FindAllStringSubmatch(path, -1) {
					if !slices.Contains(pathParams, m[1]) {
						t.Errorf("%s %s: path parameter {%s} is not declared", strings.ToUpper(key), path, m[1])
					}
				}
				pathParams = pathParams[:before]
				routes = append(routes, strings.ToUpper(key)+" "+path)
			case key == "parameters", key == "summary", key == "description", key == "servers":
			default:
				t.Errorf("%s: unexpected key %q", path, key)
			}
		}
	}
	slices.Sort(routes)
	return routes
}

// TestOpenAPIMatchesRoutes: the operations of api/kms.openapi.yaml are
// exactly the routes the server registers (same methods, same paths and
// wildcards): nothing served is undocumented, nothing documented is
// missing.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	documented := openAPIRoutes(t)
	s, _ := openAPIService(t)
	served := slices.Clone(s.Handler().(*apiHandler).patterns)
	slices.Sort(served)
	if len(served) < 30 {
		t.Fatalf("only %d routes registered: %v", len(served), served)
	}
	for _, r := range served {
		if _, found := slices.BinarySearch(documented, r); !found {
			t.Errorf("served but not in api/kms.openapi.yaml: %s", r)
		}
	}
	for _, r := range documented {
		if _, found := slices.BinarySearch(served, r); !found {
			t.Errorf("in api/kms.openapi.yaml but not served: %s", r)
		}
	}
	if len(slices.Compact(slices.Clone(served))) != len(served) {
		t.Errorf("a route is registered twice: %v", served)
	}
}

// TestOpenAPIPathsAreServed sends one request per documented operation,
// with sample values in the path parameters, to the real handler and
// checks that the router matched it to that operation's pattern (the
// pattern is the operation label of veil_kms_requests_total) rather than
// answering "no such endpoint" or "method not allowed".
func TestOpenAPIPathsAreServed(t *testing.T) {
	documented := openAPIRoutes(t)
	s, reg := openAPIService(t)
	h := s.Handler()
	wild := regexp.MustCompile(`\{[^}]*\}`)
	for _, op := range documented {
		method, path, _ := strings.Cut(op, " ")
		target := wild.ReplaceAllString(path, "x_sample")
		r := httptest.NewRequest(method, target, nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		switch path {
		case "/healthz", "/readyz", "/metrics": // not behind the API wrapper
			if w.Code != http.StatusOK {
				t.Errorf("%s: %d", op, w.Code)
			}
			continue
		}
		if !hasRequestSeries(t, reg, op) {
			t.Errorf("%s %s was not routed to %q (answer %d: %s)", method, target, op, w.Code, strings.TrimSpace(w.Body.String()))
		}
	}
	// The probe bites: an undocumented path and a wrong method are not
	// routed.
	for _, probe := range [][2]string{{"GET", "/v1/keys/x_sample/nonexistent"}, {"PATCH", "/v1/keys"}} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(probe[0], probe[1], nil))
		if w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: %d, want 404 or 405", probe[0], probe[1], w.Code)
		}
	}
	if !hasRequestSeries(t, reg, "unmatched") {
		t.Error("unmatched requests are not counted; the probe cannot tell routed from unrouted")
	}
}

func hasRequestSeries(t *testing.T, reg *prometheus.Registry, op string) bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "veil_kms_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" && l.GetValue() == op && m.GetCounter().GetValue() > 0 {
					return true
				}
			}
		}
	}
	return false
}

// openAPIService is an initialized, unsealed service with its own metrics
// registry.
func openAPIService(t *testing.T) (*Service, *prometheus.Registry) {
	t.Helper()
	st, err := store.OpenBolt(t.TempDir(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Initialize(context.Background(), st, ModeShamir, 1, 1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s, err := New(context.Background(), Options{Store: st, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); st.Close() })
	if _, err := s.Unseal(context.Background(), res.Shares[0]); err != nil {
		t.Fatal(err)
	}
	return s, reg
}
