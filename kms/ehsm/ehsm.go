// Package ehsm offers an eHSM-compatible face of veil's key service:
// POST /ehsm?Action=NAME with a JSON body {"appid", "timestamp", "payload",
// "sign"} signed with HMAC-SHA256 over the sorted parameters, as BigDL PPML's
// EHSMKeyManagementService and eHSM's own clients send it.
//
// Every action is a call of the kms.Service methods, so apps, key
// ownership, policies and the audit chain are veil's. Requests are
// authenticated through kms.Service.AuthenticateAppMAC: the same timestamp
// window, disabled-app check and per-app replay cache as veil's own signed
// requests. A request without an explicit nonce is remembered by its MAC, so
// an identical request is refused as a replay. Enroll needs veil's admin
// token (eHSM leaves it open).
//
// It does not protect against a client that leaks its eHSM API key (which
// is as powerful as the app's veil API key), and it offers no remote
// attestation actions (GenerateQuote, VerifyQuote).
package ehsm

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
)

// MaxBody bounds a request body.
const MaxBody = 1 << 20

// Response codes (the "code" field), as eHSM uses HTTP-like numbers.
const (
	CodeOK           = 200
	CodeBadRequest   = 400
	CodeUnauthorized = 401
	CodeForbidden    = 403
	CodeNotFound     = 404
	CodeInternal     = 500
)

// APIKey returns the eHSM API key of a veil app whose veil API key is
// veilAPIKey: the hex form of the app's request-signing key. eHSM clients
// use it as their HMAC key (its UTF-8 bytes).
func APIKey(veilAPIKey string) string {
	sk := api.SigningKey(veilAPIKey)
	defer clear(sk)
	return hex.EncodeToString(sk)
}

// Options configure the handler.
type Options struct {
	// Version is returned by GetVersion.
	Version string
	// Logger receives the server's connection errors (default: discard).
	Logger *slog.Logger
}

// Handler serves the eHSM actions on /ehsm over svc.
func Handler(svc *kms.Service, opt Options) http.Handler {
	h := &handler{svc: svc, opt: opt}
	mux := http.NewServeMux()
	mux.Handle("/ehsm", h)
	mux.Handle("/ehsm/", h)
	return mux
}

type handler struct {
	svc *kms.Service
	opt Options
}

// Request is the JSON body of a signed eHSM request.
type Request struct {
	AppID     string                     `json:"appid"`
	Nonce     string                     `json:"nonce,omitempty"`
	Timestamp string                     `json:"timestamp"`
	Payload   map[string]json.RawMessage `json:"payload,omitempty"`
	Sign      string                     `json:"sign"`
}

// Response is the JSON body of every answer.
type Response struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Result  map[string]any `json:"result"`
}

// payloadValue renders a payload value as it is signed: a string as is, a
// number or boolean as its JSON text.
func payloadValue(raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	t := strings.TrimSpace(string(raw))
	if _, err := strconv.ParseFloat(t, 64); err == nil || t == "true" || t == "false" {
		return t, nil
	}
	return "", errors.New("payload values must be strings, numbers or booleans")
}

// StringToSign is the signed form of a request: its parameters other than
// sign in ASCII order as name=value joined by '&', where the value of
// payload is its own members in ASCII order, name=value joined by '&'.
func StringToSign(appID, nonce, timestamp string, payload map[string]string) string {
	names := make([]string, 0, len(payload))
	for k := range payload {
		names = append(names, k)
	}
	sort.Strings(names)
	var p []string
	for _, k := range names {
		p = append(p, k+"="+payload[k])
	}
	parts := []string{"appid=" + appID}
	if nonce != "" {
		parts = append(parts, "nonce="+nonce)
	}
	parts = append(parts, "payload="+strings.Join(p, "&"), "timestamp="+timestamp)
	return strings.Join(parts, "&")
}

// Signature is base64(HMAC-SHA256(apiKey, StringToSign(...))).
func Signature(apiKey, stringToSign string) string {
	m := hmac.New(sha256.New, []byte(apiKey))
	m.Write([]byte(stringToSign))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

type failure struct {
	code int
	msg  string
}

func (f *failure) Error() string { return f.msg }

func failf(code int, format string, a ...any) error {
	return &failure{code: code, msg: fmt.Sprintf(format, a...)}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	res, err := h.serve(r)
	out := Response{Code: CodeOK, Message: "success!", Result: res}
	if err != nil {
		out = Response{Code: CodeInternal, Message: "internal error", Result: map[string]any{}}
		var f *failure
		var ke *kms.Error
		switch {
		case errors.As(err, &f):
			out.Code, out.Message = f.code, f.msg
		case errors.As(err, &ke):
			out.Code, out.Message = ke.Status, ke.Error()
			if out.Code >= 500 {
				out.Code = CodeInternal
			}
		}
	}
	if out.Result == nil {
		out.Result = map[string]any{}
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	// eHSM answers every request with HTTP 200 and the outcome in "code".
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, '\n'))
}

func (h *handler) serve(r *http.Request) (map[string]any, error) {
	action := r.URL.Query().Get("Action")
	if action == "GetVersion" {
		return map[string]any{"version": h.opt.Version, "git_sha": ""}, nil
	}
	if r.Method != http.MethodPost {
		return nil, failf(CodeBadRequest, "use POST")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		return nil, failf(CodeBadRequest, "reading the request: %v", err)
	}
	if len(body) > MaxBody {
		return nil, failf(CodeBadRequest, "the request is longer than %d bytes", MaxBody)
	}
	if action == "Enroll" {
		return h.enroll(r, body)
	}
	act, ok := actions[action]
	if !ok {
		return nil, failf(CodeBadRequest, "action %q is not offered", action)
	}
	var req Request
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, failf(CodeBadRequest, "malformed request: %v", err)
	}
	payload := map[string]string{}
	for k, v := range req.Payload {
		s, err := payloadValue(v)
		if err != nil {
			return nil, failf(CodeBadRequest, "payload %q: %v", k, err)
		}
		payload[k] = s
	}
	c, err := h.authenticate(r.Context(), req, payload)
	if err != nil {
		return nil, err
	}
	return act(r.Context(), h, c, payload)
}

func (h *handler) authenticate(ctx context.Context, req Request, payload map[string]string) (kms.Caller, error) {
	ms, err := strconv.ParseInt(req.Timestamp, 10, 64)
	if err != nil || strconv.FormatInt(ms, 10) != req.Timestamp {
		return kms.Caller{}, failf(CodeUnauthorized, "timestamp must be decimal Unix milliseconds")
	}
	mac, err := base64.StdEncoding.DecodeString(req.Sign)
	if err != nil || len(mac) != sha256.Size {
		return kms.Caller{}, failf(CodeUnauthorized, "sign must be a base64 HMAC-SHA256")
	}
	nonce := req.Nonce
	if nonce == "" {
		// The MAC names the request: an identical one is a replay.
		nonce = "s" + hex.EncodeToString(mac[:20])
	}
	sts := StringToSign(req.AppID, req.Nonce, req.Timestamp, payload)
	return h.svc.AuthenticateAppMAC(ctx, req.AppID, time.UnixMilli(ms), nonce, func(sk []byte) bool {
		key := []byte(hex.EncodeToString(sk))
		m := hmac.New(sha256.New, key)
		m.Write([]byte(sts))
		clear(key)
		return hmac.Equal(m.Sum(nil), mac)
	})
}

// enroll registers an app; it needs the admin token as a bearer token.
func (h *handler) enroll(r *http.Request, body []byte) (map[string]any, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return nil, failf(CodeUnauthorized, "Enroll needs the admin token: Authorization: Bearer TOKEN")
	}
	c, err := h.svc.AuthenticateAdmin(r.Context(), tok)
	if err != nil {
		return nil, err
	}
	var req struct {
		Name string `json:"name"`
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return nil, failf(CodeBadRequest, "malformed request: %v", err)
		}
	}
	if req.Name == "" {
		req.Name = "ehsm-" + randomHex(6)
	}
	out, err := h.svc.Enroll(r.Context(), c, api.EnrollRequest{Name: req.Name})
	if err != nil {
		return nil, err
	}
	return map[string]any{"appid": out.AppID, "apikey": APIKey(out.APIKey)}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Serve serves the eHSM actions over TLS (kms.TLSConfig) on ln until ctx
// is done.
func Serve(ctx context.Context, svc *kms.Service, ln net.Listener, cert tls.Certificate, opt Options) error {
	srv := &http.Server{
		Handler:           Handler(svc, opt),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	if opt.Logger != nil {
		srv.ErrorLog = slog.NewLogLogger(opt.Logger.Handler(), slog.LevelWarn)
	} else {
		srv.ErrorLog = log.New(io.Discard, "", 0)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, kms.TLSConfig(cert))) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-errc
		return nil
	}
}
