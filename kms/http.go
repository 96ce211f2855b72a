package kms

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/store"
)

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	releases *prometheus.CounterVec
	// integrity counts stored records refused because their MAC failed.
	integrity *prometheus.CounterVec
	badShares prometheus.Counter
}

func (m *metrics) integrityFailure(e *store.IntegrityError) {
	m.integrity.WithLabelValues(e.Bucket).Inc()
}

func newMetrics(reg *prometheus.Registry, s *Service) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "veil_kms_requests_total", Help: "Requests by operation and HTTP status.",
		}, []string{"op", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "veil_kms_request_duration_seconds", Help: "Request latency by operation.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, 1},
		}, []string{"op"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "veil_kms_releases_total", Help: "Key and secret releases to workloads, granted or denied.",
		}, []string{"result"}),
		integrity: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "veil_kms_record_integrity_failures_total", Help: "Stored records refused because their MAC does not verify, by bucket.",
		}, []string{"bucket"}),
		badShares: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "veil_kms_unseal_bad_shares_total", Help: "Unseal shares refused because they match no issued share.",
		}),
	}
	damaged := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "veil_kms_audit_chain_damaged", Help: "1 once the audit chain was found damaged (the service then refuses audited requests).",
	}, func() float64 {
		if s.damaged.Load() != nil {
			return 1
		}
		return 0
	})
	sealed := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "veil_kms_sealed", Help: "1 while the key service is sealed.",
	}, func() float64 {
		if s.Status().Sealed {
			return 1
		}
		return 0
	})
	reg.MustRegister(m.requests, m.latency, m.releases, m.integrity, m.badShares, damaged, sealed)
	return m
}

func (m *metrics) release(granted bool) {
	if granted {
		m.releases.WithLabelValues("granted").Inc()
	} else {
		m.releases.WithLabelValues("denied").Inc()
	}
}

// request is what a handler sees.
type request struct {
	r      *http.Request
	body   []byte
	caller Caller
}

func (q *request) decode(v any) error {
	if err := api.DecodeStrict(q.body, v); err != nil {
		var uf *api.UnknownFieldError
		if errors.As(err, &uf) {
			return fail(ErrUnknownField, "unknown field %q", uf.Field)
		}
		return fail(ErrMalformedJSON, "%v", err)
	}
	return nil
}

// query returns the query parameters, refusing any not in allowed.
func (q *request) query(allowed ...string) (url.Values, error) {
	v := q.r.URL.Query()
	for k := range v {
		if !slices.Contains(allowed, k) {
			return nil, fail(ErrUnknownField, "unknown query parameter %q", k)
		}
	}
	return v, nil
}

// policyCaller is the caller of a policy endpoint: the app itself, or the
// admin acting for the app named by ?app=APPID.
func (s *Service) policyCaller(ctx context.Context, q *request) (Caller, error) {
	v, err := q.query("app")
	if err != nil {
		return Caller{}, err
	}
	if app := v.Get("app"); app != "" {
		return s.OnBehalfOf(ctx, q.caller, app)
	}
	if q.caller.Kind == KindAdmin {
		return Caller{}, fail(ErrForbidden, "an admin manages an app's policies by naming it: ?app=APPID")
	}
	return q.caller, nil
}

type handlerFunc func(ctx context.Context, q *request) (int, any, error)

const (
	authNone = iota
	authCaller
)

// Handler returns the HTTP handler of the /v1 API, /healthz, /readyz and
// /metrics.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	var patterns []string
	handle := func(pattern string, hd http.Handler) {
		patterns = append(patterns, pattern)
		mux.Handle(pattern, hd)
	}
	h := func(pattern string, auth int, fn handlerFunc) { handle(pattern, s.wrap(pattern, auth, fn)) }
	ok := func(v any, err error) (int, any, error) { return http.StatusOK, v, err }
	created := func(v any, err error) (int, any, error) { return http.StatusCreated, v, err }
	// policyRoutes attaches and detaches release policies of keys or secrets.
	policyRoutes := func(kind string, set func(ctx context.Context, c Caller, ref, policy string, attach bool) (any, error)) {
		h("POST /v1/"+kind+"/{ref}/policies", authCaller, func(ctx context.Context, q *request) (int, any, error) {
			var req api.AttachPolicyRequest
			if err := q.decode(&req); err != nil {
				return 0, nil, err
			}
			pc, err := s.policyCaller(ctx, q)
			if err != nil {
				return 0, nil, err
			}
			return ok(set(ctx, pc, q.r.PathValue("ref"), req.Policy, true))
		})
		h("DELETE /v1/"+kind+"/{ref}/policies/{policy}", authCaller, func(ctx context.Context, q *request) (int, any, error) {
			pc, err := s.policyCaller(ctx, q)
			if err != nil {
				return 0, nil, err
			}
			return ok(set(ctx, pc, q.r.PathValue("ref"), q.r.PathValue("policy"), false))
		})
	}

	handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) }))
	handle("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Each replica answers for itself: sealed, its database
		// unreachable, its view of the audit chain damaged, or ready.
		if p, ok := s.st.(store.Pinger); ok {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			err := p.Ping(ctx)
			cancel()
			if err != nil {
				writeProblem(w, fail(ErrStoreUnavailable, "%v", err))
				return
			}
		}
		st := s.Status()
		if st.Sealed {
			writeProblem(w, fail(ErrSealed, "the key service is sealed"))
			return
		}
		if err := s.chainUsable(); err != nil {
			writeProblem(w, err)
			return
		}
		writeJSON(w, 200, map[string]string{"status": "ready"})
	}))
	handle("GET /metrics", promhttp.HandlerFor(s.opt.Registry, promhttp.HandlerOpts{}))

	h("GET /v1/sys/status", authNone, func(ctx context.Context, q *request) (int, any, error) { return ok(s.Status(), nil) })
	h("GET /v1/sys/attestation", authNone, func(ctx context.Context, q *request) (int, any, error) {
		if s.opt.Attestation == nil {
			return 0, nil, fail(ErrNotFound, "this key service presents no evidence: it was not started with --attest inside a TEE")
		}
		nonce, err := hex.DecodeString(q.r.URL.Query().Get("nonce"))
		if err != nil || len(nonce) != 32 {
			return 0, nil, fail(ErrBadRequest, "nonce must be 64 hex digits (32 bytes)")
		}
		a, err := s.opt.Attestation(ctx, nonce)
		if err != nil {
			return 0, nil, fail(ErrInternal, "issuing evidence: %v", err)
		}
		return ok(a, nil)
	})
	h("POST /v1/sys/unseal", authNone, func(ctx context.Context, q *request) (int, any, error) {
		var req api.UnsealRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return ok(s.Unseal(ctx, req.Share))
	})
	h("POST /v1/sys/seal", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		if err := require(q.caller, KindAdmin); err != nil {
			return 0, nil, err
		}
		s.auditBatch(ctx, sealEntry(q.caller), nil)
		s.Seal()
		return ok(s.Status(), nil)
	})

	h("POST /v1/apps", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.EnrollRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return created(s.Enroll(ctx, q.caller, req))
	})
	h("POST /v1/apps/{app}/rotate-key", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		if len(q.body) > 0 {
			var empty struct{}
			if err := q.decode(&empty); err != nil {
				return 0, nil, err
			}
		}
		return ok(s.RotateAppKey(ctx, q.caller, q.r.PathValue("app")))
	})
	h("POST /v1/apps/{app}/disable", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		if len(q.body) > 0 {
			var empty struct{}
			if err := q.decode(&empty); err != nil {
				return 0, nil, err
			}
		}
		return ok(s.DisableApp(ctx, q.caller, q.r.PathValue("app")))
	})
	h("GET /v1/apps", authCaller, func(ctx context.Context, q *request) (int, any, error) { return ok(s.ListApps(ctx, q.caller)) })

	h("POST /v1/keys", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.CreateKeyRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return created(s.CreateKeyOnce(ctx, q.caller, req, q.r.Header.Get(api.HeaderRequestID)))
	})
	h("GET /v1/keys", authCaller, func(ctx context.Context, q *request) (int, any, error) { return ok(s.ListKeys(ctx, q.caller)) })
	h("GET /v1/keys/{ref}", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		return ok(s.DescribeKey(ctx, q.caller, q.r.PathValue("ref")))
	})
	for _, a := range []KeyAction{ActionEnable, ActionDisable, ActionRotate, ActionCancelDelete} {
		h("POST /v1/keys/{ref}/"+string(a), authCaller, func(ctx context.Context, q *request) (int, any, error) {
			if len(q.body) > 0 {
				var empty struct{}
				if err := q.decode(&empty); err != nil {
					return 0, nil, err
				}
			}
			return ok(s.UpdateKey(ctx, q.caller, q.r.PathValue("ref"), a, 0))
		})
	}
	h("POST /v1/keys/{ref}/schedule-deletion", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.ScheduleDeletionRequest
		if len(q.body) > 0 {
			if err := q.decode(&req); err != nil {
				return 0, nil, err
			}
		}
		return ok(s.UpdateKey(ctx, q.caller, q.r.PathValue("ref"), ActionScheduleDelete, req.PendingDays))
	})
	policyRoutes("keys", func(ctx context.Context, c Caller, ref, policy string, attach bool) (any, error) {
		return s.SetKeyPolicy(ctx, c, ref, policy, attach)
	})
	h("POST /v1/keys/{ref}/encrypt", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.EncryptRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return ok(s.Encrypt(ctx, q.caller, q.r.PathValue("ref"), req))
	})
	for _, without := range []bool{false, true} {
		p := "POST /v1/keys/{ref}/generate-data-key"
		if without {
			p += "-without-plaintext"
		}
		h(p, authCaller, func(ctx context.Context, q *request) (int, any, error) {
			var req api.DataKeyRequest
			if len(q.body) > 0 {
				if err := q.decode(&req); err != nil {
					return 0, nil, err
				}
			}
			return ok(s.GenerateDataKey(ctx, q.caller, q.r.PathValue("ref"), req, without))
		})
	}
	h("POST /v1/keys/{ref}/sign", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.SignRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return ok(s.Sign(ctx, q.caller, q.r.PathValue("ref"), req))
	})
	h("POST /v1/keys/{ref}/verify", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.VerifyRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return ok(s.Verify(ctx, q.caller, q.r.PathValue("ref"), req))
	})
	h("GET /v1/keys/{ref}/public-key", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		v, err := q.query("version")
		if err != nil {
			return 0, nil, err
		}
		ver := 0
		if vs := v.Get("version"); vs != "" {
			if ver, err = strconv.Atoi(vs); err != nil || ver < 1 {
				return 0, nil, fail(ErrInvalidField, "query parameter \"version\" must be a positive integer")
			}
		}
		return ok(s.PublicKey(ctx, q.caller, q.r.PathValue("ref"), ver))
	})
	h("POST /v1/keys/{ref}/asymmetric-decrypt", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.AsymmetricDecryptRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return ok(s.AsymmetricDecrypt(ctx, q.caller, q.r.PathValue("ref"), req))
	})
	h("POST /v1/decrypt", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.DecryptRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return ok(s.Decrypt(ctx, q.caller, req))
	})

	h("PUT /v1/secrets/{ref}", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.PutSecretRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		return ok(s.PutSecret(ctx, q.caller, q.r.PathValue("ref"), req))
	})
	h("GET /v1/secrets", authCaller, func(ctx context.Context, q *request) (int, any, error) { return ok(s.ListSecrets(ctx, q.caller)) })
	h("GET /v1/secrets/{ref}", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		v, err := q.query("version")
		if err != nil {
			return 0, nil, err
		}
		ver := 0
		if vs := v.Get("version"); vs != "" {
			if ver, err = strconv.Atoi(vs); err != nil || ver < 1 {
				return 0, nil, fail(ErrInvalidField, "query parameter \"version\" must be a positive integer")
			}
		}
		return ok(s.GetSecret(ctx, q.caller, q.r.PathValue("ref"), ver))
	})
	h("DELETE /v1/secrets/{ref}", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		return http.StatusNoContent, nil, s.DeleteSecret(ctx, q.caller, q.r.PathValue("ref"))
	})
	policyRoutes("secrets", func(ctx context.Context, c Caller, ref, policy string, attach bool) (any, error) {
		return s.SetSecretPolicy(ctx, c, ref, policy, attach)
	})

	h("POST /v1/policies", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.CreatePolicyRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		pc, err := s.policyCaller(ctx, q)
		if err != nil {
			return 0, nil, err
		}
		return created(s.CreatePolicy(ctx, pc, req))
	})
	h("GET /v1/policies", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		pc, err := s.policyCaller(ctx, q)
		if err != nil {
			return 0, nil, err
		}
		return ok(s.ListPolicies(ctx, pc))
	})
	h("GET /v1/policies/{ref}", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		pc, err := s.policyCaller(ctx, q)
		if err != nil {
			return 0, nil, err
		}
		return ok(s.GetPolicy(ctx, pc, q.r.PathValue("ref")))
	})
	h("PUT /v1/policies/{ref}", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		var req api.ReplacePolicyRequest
		if err := q.decode(&req); err != nil {
			return 0, nil, err
		}
		pc, err := s.policyCaller(ctx, q)
		if err != nil {
			return 0, nil, err
		}
		return ok(s.ReplacePolicy(ctx, pc, q.r.PathValue("ref"), req))
	})
	h("DELETE /v1/policies/{ref}", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		pc, err := s.policyCaller(ctx, q)
		if err != nil {
			return 0, nil, err
		}
		return http.StatusNoContent, nil, s.DeletePolicy(ctx, pc, q.r.PathValue("ref"))
	})

	h("GET /v1/audit", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		v, err := q.query("key", "after", "limit")
		if err != nil {
			return 0, nil, err
		}
		var after uint64
		limit := 0
		if a := v.Get("after"); a != "" {
			if after, err = strconv.ParseUint(a, 10, 64); err != nil {
				return 0, nil, fail(ErrInvalidField, "query parameter \"after\" must be a sequence number")
			}
		}
		if l := v.Get("limit"); l != "" {
			if limit, err = strconv.Atoi(l); err != nil || limit < 1 {
				return 0, nil, fail(ErrInvalidField, "query parameter \"limit\" must be a positive integer")
			}
		}
		return ok(s.AuditEntries(ctx, q.caller, v.Get("key"), after, limit))
	})
	h("GET /v1/audit/head", authCaller, func(ctx context.Context, q *request) (int, any, error) { return ok(s.AuditHead(ctx, q.caller)) })
	h("GET /v1/audit/checkpoint", authCaller, func(ctx context.Context, q *request) (int, any, error) {
		return ok(s.AuditCheckpoint(ctx, q.caller))
	})

	return &apiHandler{patterns: patterns, HandlerFunc: func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			rec := &statusRecorder{header: http.Header{}}
			mux.ServeHTTP(rec, r)
			if rec.status == http.StatusMethodNotAllowed {
				w.Header().Set("Allow", rec.header.Get("Allow"))
				writeProblem(w, fail(ErrMethodNotAllowed, "%s is not allowed on %s", r.Method, r.URL.Path))
			} else {
				writeProblem(w, fail(ErrNotFound, "no such endpoint %s", r.URL.Path))
			}
			s.metrics.requests.WithLabelValues("unmatched", strconv.Itoa(rec.status)).Inc()
			return
		}
		mux.ServeHTTP(w, r)
	}}
}

// apiHandler serves the API; patterns lists what it routes ("METHOD
// /path/{wildcard}"), which tests compare with api/kms.openapi.yaml.
type apiHandler struct {
	http.HandlerFunc
	patterns []string
}

func sealEntry(c Caller) (e audit.Entry) {
	e.Actor = c.actor()
	e.Op = "seal"
	return e
}

type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(code int)        { r.status = code }

// wrap reads the body within the limit, authenticates, runs fn and writes
// the response or problem; it records metrics and one log line.
func (s *Service) wrap(op string, auth int, fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		q := &request{r: r}
		status, err := func() (status int, err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("handler panic: %v", p)
					status = writeProblem(w, err)
				}
			}()
			return s.serve(w, q, auth, fn)
		}()
		code := ""
		var se *Error
		if errors.As(err, &se) {
			code = se.Code
		}
		d := time.Since(start)
		s.metrics.requests.WithLabelValues(op, strconv.Itoa(status)).Inc()
		s.metrics.latency.WithLabelValues(op).Observe(d.Seconds())
		lvl := slog.LevelInfo
		if status >= 500 {
			lvl = slog.LevelError
		}
		if !s.log.Enabled(r.Context(), lvl) {
			return
		}
		attrs := []slog.Attr{slog.String("op", op), slog.Int("status", status), slog.Duration("duration", d)}
		if code != "" {
			attrs = append(attrs, slog.String("code", code))
		}
		if q.caller.Kind != "" {
			attrs = append(attrs, slog.String("caller", q.caller.Kind))
		}
		if q.caller.AppID != "" {
			attrs = append(attrs, slog.String("app_id", q.caller.AppID))
		}
		if se == nil && err != nil {
			attrs = append(attrs, slog.String("err", err.Error()))
		}
		s.log.LogAttrs(r.Context(), lvl, "request", attrs...)
	})
}

func (s *Service) serve(w http.ResponseWriter, q *request, auth int, fn handlerFunc) (int, error) {
	r := q.r
	body, err := readBody(w, r, s.opt.MaxBody)
	if err != nil {
		return writeProblem(w, err), err
	}
	q.body = body
	if len(body) > 0 {
		if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
			err := fail(ErrUnsupportedMedia, "request bodies must be application/json, not %q", ct)
			return writeProblem(w, err), err
		}
	}
	if auth == authCaller {
		c, err := s.authenticate(r, body)
		if err != nil {
			return writeProblem(w, err), err
		}
		q.caller = c
	}
	status, resp, err := fn(r.Context(), q)
	if err != nil {
		return writeProblem(w, err), err
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return status, nil
	}
	writeJSON(w, status, resp)
	return status, nil
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, fail(ErrBodyTooLarge, "request body of %d bytes exceeds the limit of %d", r.ContentLength, limit)
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	buf := make([]byte, 0, max(0, min(r.ContentLength, limit)))
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, fail(ErrBodyTooLarge, "request body exceeds the limit of %d bytes", limit)
			}
			if errors.Is(err, io.EOF) {
				return buf, nil
			}
			return nil, fail(ErrBadRequest, "reading request body: %v", err)
		}
	}
}

func (s *Service) authenticate(r *http.Request, body []byte) (Caller, error) {
	if ah := r.Header.Get("Authorization"); ah != "" {
		tok, found := strings.CutPrefix(ah, "Bearer ")
		if !found || tok == "" {
			return Caller{}, fail(ErrUnauthenticated, "the Authorization header must be 'Bearer TOKEN'")
		}
		return s.AuthenticateAdmin(r.Context(), tok)
	}
	if app := r.Header.Get(api.HeaderAppID); app != "" {
		return s.AuthenticateApp(r.Context(), app, r.Header.Get(api.HeaderTimestamp), r.Header.Get(api.HeaderNonce),
			r.Header.Get(api.HeaderSignature), r.Method, r.RequestURI, body)
	}
	if r.TLS != nil && s.authenticateAdminCert(r.TLS.PeerCertificates) {
		return Caller{Kind: KindAdmin}, nil
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		// The evidence is verified once per connection: its certificate
		// cannot change while the connection lives.
		if ci, ok := r.Context().Value(connKey{}).(*connIdentity); ok {
			ci.once.Do(func() { ci.caller, ci.err = s.AuthenticateWorkload(r.TLS.PeerCertificates) })
			return ci.caller, ci.err
		}
		return s.AuthenticateWorkload(r.TLS.PeerCertificates)
	}
	return Caller{}, fail(ErrUnauthenticated, "no credentials: send an admin token, a signed app request or an attested client certificate")
}

type connKey struct{}

// connIdentity caches a workload's verified identity for one connection.
type connIdentity struct {
	once   sync.Once
	caller Caller
	err    error
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := api.MarshalJSONResponse(v)
	if err != nil {
		writeProblem(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeProblem renders err as RFC 7807 and returns the status written.
func writeProblem(w http.ResponseWriter, err error) int {
	var se *Error
	if !errors.As(serviceError(err), &se) {
		se = fail(ErrInternal, "internal error")
	}
	p := api.Problem{Type: api.ProblemTypeBase + se.Code, Title: strings.ReplaceAll(se.Code, "_", " "),
		Status: se.Status, Detail: se.Detail, Code: se.Code, Unmet: se.Unmet}
	b, _ := json.Marshal(p)
	w.Header().Set("Content-Type", api.ProblemContentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(se.Status)
	w.Write(append(b, '\n'))
	return se.Status
}

// TLSConfig returns the server TLS configuration: TLS 1.3 only, client
// certificates requested (not required) so that workloads can present
// RA-TLS certificates, which the WorkloadVerifier checks by their evidence.
func TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
	}
}

// HTTPServer is the HTTP server the key service runs h in (timeouts,
// header limit, per-connection state); Serve wraps its listener in
// TLSConfig. Exported so that a benchmark of the bare transport
// (internal/kmsload BenchmarkTransport) runs exactly the same stack.
func HTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, &connIdentity{})
		},
	}
}

// Serve serves the API over TLS on ln until ctx is done, sweeping keys due
// for deletion every minute.
func (s *Service) Serve(ctx context.Context, ln net.Listener, cert tls.Certificate) error {
	srv := HTTPServer(s.Handler(), s.log)
	tln := tls.NewListener(ln, TLSConfig(cert))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tln) }()
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case err := <-errc:
			return err
		case <-tick.C:
			if n, err := s.Sweep(ctx); err == nil && n > 0 {
				s.log.Info("deleted keys past their deletion time", "count", n)
			}
			// Records deleted or rolled back while the server runs are
			// found here rather than at the next start.
			if k, err := s.keyring(); err == nil {
				s.checkChainOnUnseal(ctx, k)
			}
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			<-errc
			return nil
		}
	}
}
