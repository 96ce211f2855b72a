package client

import (
	"context"
	"fmt"
	"net/url"
	"strconv"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
)

// AuditHead returns the authenticated head of the audit chain (admin).
func (c *Client) AuditHead(ctx context.Context) (h api.AuditHead, err error) {
	return h, c.do(ctx, "GET", "/v1/audit/head", nil, asAdmin, &h)
}

// AuditEntries returns audit entries with sequence numbers in (after,
// upTo] (upTo 0: no bound), optionally only those naming key.
func (c *Client) AuditEntries(ctx context.Context, key string, after, upTo uint64) ([]audit.Entry, error) {
	var out []audit.Entry
	for {
		q := url.Values{}
		q.Set("after", strconv.FormatUint(after, 10))
		if key != "" {
			q.Set("key", key)
		}
		var page api.AuditPage
		if err := c.do(ctx, "GET", "/v1/audit?"+q.Encode(), nil, asAdmin, &page); err != nil {
			return nil, err
		}
		for _, raw := range page.Entries {
			e, err := audit.Parse(raw)
			if err != nil {
				return nil, fmt.Errorf("reading audit entry after %d: %w", after, err)
			}
			if upTo != 0 && e.Seq > upTo {
				return out, nil
			}
			out = append(out, e)
		}
		if page.Next == 0 {
			return out, nil
		}
		after = page.Next
	}
}

// VerifyAudit fetches the whole log up to the authenticated head and
// recomputes the chain locally. A head whose MAC fails is reported as a
// problem too.
func (c *Client) VerifyAudit(ctx context.Context) ([]audit.Problem, api.AuditHead, error) {
	h, err := c.AuditHead(ctx)
	if err != nil {
		return nil, h, err
	}
	es, err := c.AuditEntries(ctx, "", 0, h.Seq)
	if err != nil {
		return nil, h, err
	}
	probs := audit.Verify(es, audit.Head{Seq: h.Seq, Hash: h.Hash})
	if !h.Authentic {
		probs = append(probs, audit.Problem{Seq: h.Seq, Kind: audit.Edited, Detail: "the head of the log does not carry the server's MAC"})
	}
	return probs, h, nil
}
