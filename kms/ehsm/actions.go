package ehsm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
)

type action func(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error)

var actions = map[string]action{
	"CreateKey":                       createKey,
	"Encrypt":                         encrypt,
	"Decrypt":                         decrypt,
	"GenerateDataKey":                 generateDataKey(false),
	"GenerateDataKeyWithoutPlaintext": generateDataKey(true),
	"GetPublicKey":                    getPublicKey,
	"Sign":                            sign,
	"Verify":                          verify,
	"ListKey":                         listKey,
	"UploadQuotePolicy":               uploadQuotePolicy,
	"GetQuotePolicy":                  getQuotePolicy,
}

// Specs maps eHSM key specs onto veil's.
var Specs = map[string]string{
	"EH_AES_GCM_128": api.SpecAES256GCM, // veil has 256-bit AES keys only
	"EH_AES_GCM_192": api.SpecAES256GCM,
	"EH_AES_GCM_256": api.SpecAES256GCM,
	"EH_RSA_3072":    api.SpecRSA3072,
	"EH_EC_P256":     api.SpecECP256,
}

func ehsmSpec(veil string) string {
	switch veil {
	case api.SpecRSA3072:
		return "EH_RSA_3072"
	case api.SpecECP256:
		return "EH_EC_P256"
	}
	return "EH_AES_GCM_256"
}

func need(p map[string]string, name string) (string, error) {
	v, ok := p[name]
	if !ok || v == "" {
		return "", failf(CodeBadRequest, "payload %q is required", name)
	}
	return v, nil
}

func b64(p map[string]string, name string, required bool) ([]byte, error) {
	v, ok := p[name]
	if !ok || v == "" {
		if required {
			return nil, failf(CodeBadRequest, "payload %q is required", name)
		}
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, failf(CodeBadRequest, "payload %q must be base64", name)
	}
	return b, nil
}

func enc(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func createKey(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
	spec := api.SpecAES256GCM
	if ks := p["keyspec"]; ks != "" {
		var ok bool
		if spec, ok = Specs[ks]; !ok {
			return nil, failf(CodeBadRequest, "keyspec %q is not offered", ks)
		}
	}
	if o := p["origin"]; o != "" && o != "EH_INTERNAL_KEY" {
		return nil, failf(CodeBadRequest, "origin %q is not offered (only EH_INTERNAL_KEY)", o)
	}
	k, err := h.svc.CreateKey(ctx, c, api.CreateKeyRequest{Name: "ehsm-" + randomHex(8), Spec: spec,
		Description: "created through the eHSM interface as " + p["keyspec"]})
	if err != nil {
		return nil, err
	}
	return map[string]any{"cmk": k.ID}, nil
}

func encrypt(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
	cmk, err := need(p, "cmk")
	if err != nil {
		return nil, err
	}
	pt, err := b64(p, "plaintext", true)
	if err != nil {
		return nil, err
	}
	aad, err := b64(p, "aad", false)
	if err != nil {
		return nil, err
	}
	out, err := h.svc.Encrypt(ctx, c, cmk, api.EncryptRequest{Plaintext: pt, AAD: aad})
	clear(pt)
	if err != nil {
		return nil, err
	}
	return map[string]any{"ciphertext": enc(out.Ciphertext)}, nil
}

func decrypt(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
	cmk, err := need(p, "cmk")
	if err != nil {
		return nil, err
	}
	ct, err := b64(p, "ciphertext", true)
	if err != nil {
		return nil, err
	}
	aad, err := b64(p, "aad", false)
	if err != nil {
		return nil, err
	}
	out, err := h.svc.Decrypt(ctx, c, api.DecryptRequest{Ciphertext: ct, AAD: aad})
	if err != nil {
		return nil, err
	}
	defer clear(out.Plaintext)
	if out.KeyID != cmk {
		return nil, failf(CodeBadRequest, "the ciphertext was not made with cmk %s", cmk)
	}
	return map[string]any{"plaintext": enc(out.Plaintext)}, nil
}

func generateDataKey(without bool) action {
	return func(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
		cmk, err := need(p, "cmk")
		if err != nil {
			return nil, err
		}
		n := 32
		if v := p["keylen"]; v != "" {
			if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 1024 {
				return nil, failf(CodeBadRequest, "payload \"keylen\" must be 1-1024 bytes")
			}
		}
		aad, err := b64(p, "aad", false)
		if err != nil {
			return nil, err
		}
		out, err := h.svc.GenerateDataKey(ctx, c, cmk, api.DataKeyRequest{Length: n, AAD: aad}, without)
		if err != nil {
			return nil, err
		}
		res := map[string]any{"ciphertext": enc(out.Ciphertext)}
		if !without {
			res["plaintext"] = enc(out.Plaintext)
			clear(out.Plaintext)
		}
		return res, nil
	}
}

func getPublicKey(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
	cmk, err := need(p, "cmk")
	if err != nil {
		return nil, err
	}
	out, err := h.svc.PublicKey(ctx, c, cmk, 0)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pubkey": out.PublicKey}, nil
}

func sign(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
	cmk, err := need(p, "cmk")
	if err != nil {
		return nil, err
	}
	req, err := signInput(p)
	if err != nil {
		return nil, err
	}
	out, err := h.svc.Sign(ctx, c, cmk, req)
	if err != nil {
		return nil, err
	}
	return map[string]any{"signature": enc(out.Signature)}, nil
}

// signInput reads "digest" (a SHA-256 digest) or "message".
func signInput(p map[string]string) (api.SignRequest, error) {
	d, err := b64(p, "digest", false)
	if err != nil {
		return api.SignRequest{}, err
	}
	m, err := b64(p, "message", false)
	if err != nil {
		return api.SignRequest{}, err
	}
	if (d == nil) == (m == nil) {
		return api.SignRequest{}, failf(CodeBadRequest, "send one of payload \"digest\" and \"message\"")
	}
	return api.SignRequest{Digest: d, Message: m}, nil
}

func verify(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
	cmk, err := need(p, "cmk")
	if err != nil {
		return nil, err
	}
	in, err := signInput(p)
	if err != nil {
		return nil, err
	}
	sig, err := b64(p, "signature", true)
	if err != nil {
		return nil, err
	}
	out, err := h.svc.Verify(ctx, c, cmk, api.VerifyRequest{Digest: in.Digest, Message: in.Message, Signature: sig})
	if err != nil {
		return nil, err
	}
	return map[string]any{"result": out.Valid}, nil
}

func listKey(ctx context.Context, h *handler, c kms.Caller, _ map[string]string) (map[string]any, error) {
	out, err := h.svc.ListKeys(ctx, c)
	if err != nil {
		return nil, err
	}
	list := []map[string]any{}
	for _, k := range out.Keys {
		list = append(list, map[string]any{"keyid": k.ID, "keyspec": ehsmSpec(k.Spec), "alias": k.Name,
			"creationDate": k.Created.UnixMilli(), "state": k.State})
	}
	return map[string]any{"list": list}, nil
}

// quotePolicy is the veil policy document an uploaded quote policy becomes.
type quotePolicy struct {
	Measurements []string `json:"measurements"`
	Signer       string   `json:"signer,omitempty"`
}

func uploadQuotePolicy(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
	mre, err := need(p, "mr_enclave")
	if err != nil {
		return nil, err
	}
	doc, err := json.Marshal(quotePolicy{Measurements: []string{mre}, Signer: p["mr_signer"]})
	if err != nil {
		return nil, err
	}
	out, err := h.svc.CreatePolicy(ctx, c, api.CreatePolicyRequest{Name: "ehsm-" + randomHex(8), Document: doc})
	if err != nil {
		return nil, err
	}
	return map[string]any{"policyId": out.ID}, nil
}

func getQuotePolicy(ctx context.Context, h *handler, c kms.Caller, p map[string]string) (map[string]any, error) {
	id, err := need(p, "policyId")
	if err != nil {
		return nil, err
	}
	out, err := h.svc.GetPolicy(ctx, c, id)
	if err != nil {
		return nil, err
	}
	var qp quotePolicy
	if err := json.Unmarshal(out.Document, &qp); err != nil || len(qp.Measurements) != 1 {
		return nil, failf(CodeBadRequest, "policy %s is not a quote policy (one measurement and a signer)", id)
	}
	return map[string]any{"policyId": out.ID, "mr_enclave": qp.Measurements[0], "mr_signer": qp.Signer,
		"createTime": out.Created.UTC().Format(time.RFC3339)}, nil
}
