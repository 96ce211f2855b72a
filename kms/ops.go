package kms

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/store"
)

// Limits on request contents.
const (
	MaxPlaintext   = 4096     // encrypt
	MaxAAD         = 4096     // additional data
	MaxSecretValue = 64 << 10 // one secret version
	MaxPolicyDoc   = 16 << 10 // one policy document
	MaxDescription = 256
	MaxPendingDays = 30
)

type txFunc func(tx store.Tx, k *keyring, e *audit.Entry) error

// mutate runs fn in a write transaction that also appends the audit entry;
// a refusal is audited as denied in a commit of its own.
func (s *Service) mutate(ctx context.Context, c Caller, ev audit.Entry, fn txFunc) error {
	k, err := s.keyring()
	if err != nil {
		return err
	}
	if err := s.chainUsable(); err != nil {
		return err
	}
	ev.Actor = c.actor()
	last := ev
	err = s.update(ctx, k, func(tx store.Tx) error {
		e := ev
		e.Time = s.now()
		err := fn(tx, k, &e)
		last = e
		if err != nil {
			return err
		}
		e.Result = audit.Granted
		return s.appendAudit(tx, k, e)
	})
	var se *Error
	if errors.As(err, &se) {
		s.auditBatch(ctx, last, err)
	}
	return err
}

// read runs fn in a read transaction and audits the outcome.
func (s *Service) read(ctx context.Context, c Caller, ev audit.Entry, fn txFunc) error {
	k, err := s.keyring()
	if err != nil {
		return err
	}
	if err := s.chainUsable(); err != nil {
		return err
	}
	ev.Actor = c.actor()
	err = s.view(ctx, k, func(tx store.Tx) error { return fn(tx, k, &ev) })
	var se *Error
	if err == nil || errors.As(err, &se) {
		s.auditBatch(ctx, ev, err)
	}
	if c.Kind == KindWorkload && (ev.Key != "" || ev.Secret != "") {
		s.metrics.release(err == nil)
	}
	return err
}

func require(c Caller, kinds ...string) error {
	if slices.Contains(kinds, c.Kind) {
		return nil
	}
	return fail(ErrForbidden, "%s callers may not use this operation (it is for: %s)", c.Kind, strings.Join(kinds, ", "))
}
