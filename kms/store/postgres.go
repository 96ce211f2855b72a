package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The PostgreSQL store.
//
// Records live in one table, kms_records (bucket, key, value, mac): a
// record sealed by WithIntegrity (0x01 || mac || value) is stored with
// its MAC in the mac column and its value in the value column; any other
// value is stored as is with a NULL mac. The split is lossless, and the
// MAC is checked by the service exactly as on bbolt: whoever can write
// the table (a database administrator) is as untrusted as whoever can
// write kms.db.
//
// Writers are ordered by the database: every read-write transaction first
// takes the row lock of kms_writer (SELECT ... FOR UPDATE), so writes from
// any number of replicas run one after another, each seeing every earlier
// commit — in particular, the audit chain's head and the state digest it
// carries are read and rewritten under that lock in the same transaction
// as the change they record. Read-only transactions run on a consistent
// snapshot (REPEATABLE READ) without blocking writers.
//
// The server creates and migrates its schema itself (schemaMigrations,
// recorded in kms_schema_version).

// SchemaVersion is the schema version this build creates and reads.
const SchemaVersion = 2

// ErrSchemaTooNew is returned when the database was migrated by a newer
// server.
var ErrSchemaTooNew = errors.New("the database schema is newer than this server")

// schemaMigrations are the ordered schema steps; step i brings the schema
// from version i to version i+1. Never edit a released step: append one.
var schemaMigrations = []string{
	// 1: records and the writers' lock.
	`CREATE TABLE kms_records (
		bucket text  NOT NULL,
		key    bytea NOT NULL,
		value  bytea NOT NULL,
		mac    bytea,
		PRIMARY KEY (bucket, key)
	);
	CREATE TABLE kms_writer (id integer PRIMARY KEY CHECK (id = 1));
	INSERT INTO kms_writer VALUES (1);`,
	// 2: replay-protection nonces shared by replicas.
	`CREATE TABLE kms_nonces (
		app     text        NOT NULL,
		nonce   text        NOT NULL,
		expires timestamptz NOT NULL,
		PRIMARY KEY (app, nonce)
	);
	CREATE INDEX kms_nonces_expires ON kms_nonces (expires);`,
}

// PostgresOptions tunes OpenPostgres.
type PostgresOptions struct {
	// MaxConns bounds the connection pool (default 16).
	MaxConns int32
	// TargetVersion migrates only up to this schema version (tests of
	// migrations; default SchemaVersion).
	TargetVersion int
}

// Postgres is the Store on a PostgreSQL database.
type Postgres struct {
	pool      *pgxpool.Pool
	lastSweep atomic.Int64 // Unix nanoseconds
}

// OpenPostgres connects to the database at url (a postgres:// URL or a
// libpq keyword string) and creates or migrates the schema.
func OpenPostgres(ctx context.Context, url string, opt PostgresOptions) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing the PostgreSQL address: %w", err)
	}
	cfg.MaxConns = 16
	if opt.MaxConns > 0 {
		cfg.MaxConns = opt.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	p := &Postgres{pool: pool}
	target := opt.TargetVersion
	if target == 0 {
		target = SchemaVersion
	}
	if err := p.migrate(ctx, target); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

// migrate brings the schema to version target, one step per transaction,
// under an advisory lock so that replicas starting together migrate once.
func (p *Postgres) migrate(ctx context.Context, target int) error {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer conn.Release()
	const lockID = 0x7665696c6b6d73 // "veilkms"
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(lockID)); err != nil {
		return fmt.Errorf("locking the schema for migration: %w", err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", int64(lockID))
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS kms_schema_version (version integer NOT NULL)`); err != nil {
		return fmt.Errorf("creating the schema version table: %w", err)
	}
	v, err := schemaVersion(ctx, conn)
	if err != nil {
		return err
	}
	if v > SchemaVersion {
		return fmt.Errorf("%w: the database has schema version %d, this server knows up to %d", ErrSchemaTooNew, v, SchemaVersion)
	}
	for ; v < target; v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, schemaMigrations[v]); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "DELETE FROM kms_schema_version"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO kms_schema_version (version) VALUES ($1)", v+1)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrating the schema to version %d: %w", v+1, err)
		}
	}
	return nil
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func schemaVersion(ctx context.Context, q querier) (int, error) {
	var v int
	err := q.QueryRow(ctx, "SELECT version FROM kms_schema_version").Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the schema version: %w", err)
	}
	return v, nil
}

// SchemaVersion returns the database's schema version.
func (p *Postgres) SchemaVersion(ctx context.Context) (int, error) {
	return schemaVersion(ctx, p.pool)
}

// Ping reports whether the database answers.
func (p *Postgres) Ping(ctx context.Context) error {
	if err := p.pool.Ping(ctx); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// View implements Store.
func (p *Postgres) View(ctx context.Context, fn func(Tx) error) error {
	return p.run(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, false, fn)
}

// Update implements Store.
func (p *Postgres) Update(ctx context.Context, fn func(Tx) error) error {
	return p.run(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, true, fn)
}

func (p *Postgres) run(ctx context.Context, opt pgx.TxOptions, write bool, fn func(Tx) error) error {
	tx, err := p.pool.BeginTx(ctx, opt)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer tx.Rollback(context.Background())
	if write {
		// The writers' lock: all read-write transactions, on every
		// replica, run one after another.
		if _, err := tx.Exec(ctx, "SELECT id FROM kms_writer WHERE id = 1 FOR UPDATE"); err != nil {
			return fmt.Errorf("taking the writers' lock: %w", err)
		}
	}
	if err := fn(&pgTx{ctx: ctx, tx: tx, write: write}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

// Close implements Store.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

// Pool returns the connection pool (tests).
func (p *Postgres) Pool() *pgxpool.Pool { return p.pool }

type pgTx struct {
	ctx   context.Context
	tx    pgx.Tx
	write bool
}

var errReadOnly = errors.New("write in a read-only transaction")

func joinEnvelope(value, mac []byte) []byte {
	if mac == nil {
		return value
	}
	out := make([]byte, 0, 1+len(mac)+len(value))
	out = append(out, envelopeV1)
	out = append(out, mac...)
	return append(out, value...)
}

func splitEnvelope(stored []byte) (value, mac []byte) {
	if len(stored) >= 1+RecordMACSize && stored[0] == envelopeV1 {
		return stored[1+RecordMACSize:], stored[1 : 1+RecordMACSize]
	}
	return stored, nil
}

func (t *pgTx) Get(bucket, key string) ([]byte, error) {
	var value, mac []byte
	err := t.tx.QueryRow(t.ctx, "SELECT value, mac FROM kms_records WHERE bucket = $1 AND key = $2", bucket, []byte(key)).Scan(&value, &mac)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s/%s: %w", bucket, key, err)
	}
	return joinEnvelope(value, mac), nil
}

func (t *pgTx) Put(bucket, key string, stored []byte) error {
	if !t.write {
		return errReadOnly
	}
	value, mac := splitEnvelope(stored)
	if value == nil {
		value = []byte{}
	}
	_, err := t.tx.Exec(t.ctx, `INSERT INTO kms_records (bucket, key, value, mac) VALUES ($1, $2, $3, $4)
		ON CONFLICT (bucket, key) DO UPDATE SET value = EXCLUDED.value, mac = EXCLUDED.mac`, bucket, []byte(key), value, mac)
	if err != nil {
		return fmt.Errorf("writing %s/%s: %w", bucket, key, err)
	}
	return nil
}

func (t *pgTx) Delete(bucket, key string) error {
	if !t.write {
		return errReadOnly
	}
	if _, err := t.tx.Exec(t.ctx, "DELETE FROM kms_records WHERE bucket = $1 AND key = $2", bucket, []byte(key)); err != nil {
		return fmt.Errorf("deleting %s/%s: %w", bucket, key, err)
	}
	return nil
}

func (t *pgTx) List(bucket, prefix string, fn func(string, []byte) error) error {
	p := []byte(prefix)
	rows, err := t.tx.Query(t.ctx, "SELECT key, value, mac FROM kms_records WHERE bucket = $1 AND key >= $2 ORDER BY key", bucket, p)
	if err != nil {
		return fmt.Errorf("listing %s: %w", bucket, err)
	}
	type rec struct{ k, v []byte }
	var recs []rec
	for rows.Next() {
		var k, v, mac []byte
		if err := rows.Scan(&k, &v, &mac); err != nil {
			rows.Close()
			return fmt.Errorf("listing %s: %w", bucket, err)
		}
		if !bytes.HasPrefix(k, p) {
			break
		}
		recs = append(recs, rec{k, joinEnvelope(v, mac)})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("listing %s: %w", bucket, err)
	}
	// The rows are read before fn runs: fn may query in the same
	// transaction, which a connection cannot do while a result is open.
	for _, r := range recs {
		if err := fn(string(r.k), r.v); err != nil {
			return err
		}
	}
	return nil
}

func (t *pgTx) Last(bucket string) (string, []byte, error) {
	var k, v, mac []byte
	err := t.tx.QueryRow(t.ctx, "SELECT key, value, mac FROM kms_records WHERE bucket = $1 ORDER BY key DESC LIMIT 1", bucket).Scan(&k, &v, &mac)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, ErrNotFound
	}
	if err != nil {
		return "", nil, fmt.Errorf("reading the last record of %s: %w", bucket, err)
	}
	return string(k), joinEnvelope(v, mac), nil
}

// Nonces: replay protection shared by the replicas of one database.

// ErrNonceUsed is returned by UseNonce for a nonce already used and not
// yet expired.
var ErrNonceUsed = errors.New("nonce already used")

// NonceStore is implemented by stores shared by several servers: the
// replay-protection nonces then live in the store, so a request accepted
// by one server is refused as a replay by every other.
type NonceStore interface {
	// UseNonce records (app, nonce) until expires, or returns
	// ErrNonceUsed if it is recorded and has not expired at now.
	UseNonce(ctx context.Context, app, nonce string, expires, now time.Time) error
}

// UseNonce implements NonceStore: the primary key (app, nonce) makes the
// check and the record one atomic statement on every replica; expired
// nonces are swept every ten seconds.
func (p *Postgres) UseNonce(ctx context.Context, app, nonce string, expires, now time.Time) error {
	tag, err := p.pool.Exec(ctx, `INSERT INTO kms_nonces (app, nonce, expires) VALUES ($1, $2, $3)
		ON CONFLICT (app, nonce) DO UPDATE SET expires = EXCLUDED.expires WHERE kms_nonces.expires <= $4`,
		app, nonce, expires, now)
	if err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) && ctx.Err() == nil {
			// Not an answer of the database: the nonce was not recorded
			// and the request is refused unexecuted.
			return fmt.Errorf("%w: recording the request nonce: %v", ErrUnavailable, err)
		}
		return fmt.Errorf("recording the request nonce: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNonceUsed
	}
	if last := p.lastSweep.Load(); now.UnixNano()-last > int64(10*time.Second) && p.lastSweep.CompareAndSwap(last, now.UnixNano()) {
		p.pool.Exec(ctx, "DELETE FROM kms_nonces WHERE expires <= $1", now)
	}
	return nil
}
