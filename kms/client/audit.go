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

// AuditCheckpoint returns a signed checkpoint of the log's current head
// (admin), to be stored away from the service.
func (c *Client) AuditCheckpoint(ctx context.Context) (cp audit.Checkpoint, err error) {
	return cp, c.do(ctx, "GET", "/v1/audit/checkpoint", nil, asAdmin, &cp)
}

// VerifyAudit fetches the authenticated head and every stored entry and
// recomputes the chain locally: edited, reordered and deleted entries,
// entries stored beyond the head, a head whose MAC fails and a missing
// head or genesis are all reported as problems.
func (c *Client) VerifyAudit(ctx context.Context) ([]audit.Problem, api.AuditHead, error) {
	probs, h, _, err := c.verifyAudit(ctx)
	return probs, h, err
}

func (c *Client) verifyAudit(ctx context.Context) ([]audit.Problem, api.AuditHead, []audit.Entry, error) {
	h, err := c.AuditHead(ctx)
	if err != nil {
		return nil, h, nil, err
	}
	es, err := c.AuditEntries(ctx, "", 0, 0)
	if err != nil {
		return nil, h, nil, err
	}
	var probs []audit.Problem
	if h.Damaged != "" {
		probs = append(probs, audit.Problem{Seq: h.Seq, Kind: audit.Damaged, Detail: h.Damaged})
	}
	if !h.Authentic {
		probs = append(probs, audit.Problem{Seq: h.Seq, Kind: audit.Edited, Detail: "the head of the log does not carry the server's MAC"})
	}
	probs = append(probs, audit.Verify(es, audit.Head{Seq: h.Seq, Hash: h.Hash})...)
	return probs, h, es, nil
}

// VerifyAuditCheckpoint is VerifyAudit, and also checks that the log still
// holds the checkpointed head (cp, taken earlier and kept elsewhere): a
// rollback of the whole store to a copy older than cp is reported. A
// checkpoint that is not signed by this service's audit signer is an error
// wrapping audit.ErrCheckpoint.
func (c *Client) VerifyAuditCheckpoint(ctx context.Context, cp audit.Checkpoint) ([]audit.Problem, api.AuditHead, error) {
	probs, h, es, err := c.verifyAudit(ctx)
	if err != nil {
		return nil, h, err
	}
	if err := cp.Check(h.CheckpointKey); err != nil {
		return nil, h, err
	}
	return append(probs, audit.VerifyCheckpoint(es, audit.Head{Seq: h.Seq, Hash: h.Hash}, cp)...), h, nil
}
