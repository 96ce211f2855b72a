package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Statements that need no transaction of their own — a request's nonce
// recorded together with the app's credential read, one record read — are
// what every request of a replica sends. Under load many wait at once, so
// they are sent together: a worker takes every statement queued while it
// was busy and sends them in one round trip (a pipeline ending in one
// Sync), as the audit writer does with audit entries. The database runs a
// pipeline as one implicit transaction, so no result is handed back
// before the whole batch has committed (its ReadyForQuery): a nonce
// reported recorded is recorded. The statements batched here fail only
// with their connection; if one fails otherwise, the failed ones are sent
// again one by one, so that a statement never fails because of another.

const (
	batchWorkers = 4   // connections used for batches at once
	maxBatch     = 128 // statements per batch
)

type stmt struct {
	sql  string
	args []any
	dest []any
	done chan error
}

type batcher struct {
	pool *pgxpool.Pool
	q    chan *stmt
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func newBatcher(pool *pgxpool.Pool) *batcher {
	b := &batcher{pool: pool, q: make(chan *stmt, 4096), stop: make(chan struct{})}
	for range batchWorkers {
		b.wg.Add(1)
		go b.work()
	}
	return b
}

func (b *batcher) close() {
	b.once.Do(func() { close(b.stop) })
	b.wg.Wait()
}

// do runs one statement in the next batch and scans its row into dest.
func (b *batcher) do(ctx context.Context, sql string, args []any, dest ...any) error {
	s := &stmt{sql: sql, args: args, dest: dest, done: make(chan error, 1)}
	select {
	case b.q <- s:
	case <-ctx.Done():
		return ctx.Err()
	case <-b.stop:
		return fmt.Errorf("%w: the store is closed", ErrUnavailable)
	}
	select {
	case err := <-s.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *batcher) work() {
	defer b.wg.Done()
	for {
		group, ok := NextGroup(b.q, b.stop, maxBatch)
		if !ok {
			return
		}
		b.run(group)
	}
}

// NextGroup waits for the next item of q, then takes what else is queued
// at that moment, up to max items in all: the group of a group commit,
// which forms while the previous one is being written, with no waiting
// added. It returns false once stop is closed.
func NextGroup[T any](q <-chan T, stop <-chan struct{}, max int) ([]T, bool) {
	var group []T
	select {
	case r := <-q:
		group = append(group, r)
	case <-stop:
		return nil, false
	}
	for len(group) < max {
		select {
		case r := <-q:
			group = append(group, r)
		default:
			return group, true
		}
	}
	return group, true
}

func (b *batcher) run(group []*stmt) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if len(group) == 1 {
		s := group[0]
		s.done <- b.pool.QueryRow(ctx, s.sql, s.args...).Scan(s.dest...)
		return
	}
	batch := &pgx.Batch{}
	for _, s := range group {
		batch.Queue(s.sql, s.args...)
	}
	errs := make([]error, len(group))
	conn, err := b.pool.Acquire(ctx)
	if err == nil {
		br := conn.SendBatch(ctx, batch)
		for i, s := range group {
			errs[i] = br.QueryRow().Scan(s.dest...)
		}
		err = br.Close()
		conn.Release()
	}
	if err != nil {
		// The batch as a whole failed (its connection, its commit): no
		// result of it holds.
		for _, s := range group {
			s.done <- err
		}
		return
	}
	retry := false
	for _, e := range errs {
		var pe *pgconn.PgError
		if errors.As(e, &pe) && !ConnectionFailure(e) {
			retry = true
		}
	}
	for i, s := range group {
		if retry && errs[i] != nil && !errors.Is(errs[i], pgx.ErrNoRows) {
			errs[i] = b.pool.QueryRow(ctx, s.sql, s.args...).Scan(s.dest...)
		}
		s.done <- errs[i]
	}
}
