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
	return s.readWith(ctx, c, ev, false, fn)
}

// release is read for the releases of keys (encrypt, decrypt, data keys),
// whose fn reads the key record first and may be run twice: on a
// networked store the key record is read in one statement, without a
// transaction, and only a fn that needs more (a workload's policies, a key
// named by its name) runs again in a transaction.
func (s *Service) release(ctx context.Context, c Caller, ev audit.Entry, fn txFunc) error {
	return s.readWith(ctx, c, ev, true, fn)
}

// oneGetTx serves the first Get of a read with one statement outside any
// transaction (store.OneReader); anything more needs a transaction.
type oneGetTx struct {
	ctx  context.Context
	r    store.OneReader
	used bool
}

var errNeedTx = errors.New("this read needs a transaction")

func (t *oneGetTx) Get(bucket, key string) ([]byte, error) {
	if t.used {
		return nil, errNeedTx
	}
	t.used = true
	return t.r.GetOne(t.ctx, bucket, key)
}
func (t *oneGetTx) Put(string, string, []byte) error { return errNeedTx }
func (t *oneGetTx) Delete(string, string) error      { return errNeedTx }
func (t *oneGetTx) List(string, string, func(string, []byte) error) error {
	return errNeedTx
}
func (t *oneGetTx) Last(string) (string, []byte, error) { return "", nil, errNeedTx }

func (s *Service) readWith(ctx context.Context, c Caller, ev audit.Entry, oneShot bool, fn txFunc) error {
	k, err := s.keyring()
	if err != nil {
		return err
	}
	if err := s.chainUsable(); err != nil {
		return err
	}
	ev.Actor = c.actor()
	or, single := s.st.(store.OneReader)
	if single && oneShot {
		ev0 := ev
		err = serviceError(fn(s.itx(&oneGetTx{ctx: ctx, r: or}, k), k, &ev))
		if errors.Is(err, errNeedTx) {
			ev, single = ev0, false
		}
	}
	if !single || !oneShot {
		err = s.view(ctx, k, func(tx store.Tx) error { return fn(tx, k, &ev) })
	}
	var se *Error
	if err == nil || errors.As(err, &se) {
		// Nothing is answered before its audit entry is durable: a release
		// whose entry could not be committed is not released.
		if aerr := s.auditBatch(ctx, ev, err); aerr != nil && err == nil {
			err = auditFailed(aerr)
		}
	}
	if c.Kind == KindWorkload && (ev.Key != "" || ev.Secret != "") {
		s.metrics.release(err == nil)
	}
	return err
}

// auditFailed is the answer to an operation whose audit entry could not be
// committed: the store's error when it is a service error (the database
// unreachable, the chain damaged), else an internal error.
func auditFailed(err error) error {
	var se *Error
	if errors.As(err, &se) {
		return se
	}
	return fail(ErrInternal, "the audit entry of this operation could not be committed, so its result is withheld")
}

func require(c Caller, kinds ...string) error {
	if slices.Contains(kinds, c.Kind) {
		return nil
	}
	return fail(ErrForbidden, "%s callers may not use this operation (it is for: %s)", c.Kind, strings.Join(kinds, ", "))
}
