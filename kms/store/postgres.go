package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
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
	batch     *batcher
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
	p := &Postgres{pool: pool, batch: newBatcher(pool)}
	target := opt.TargetVersion
	if target == 0 {
		target = SchemaVersion
	}
	if err := p.migrate(ctx, target); err != nil {
		p.batch.close()
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

// View implements Store. Its BEGIN is sent with the first statement (one
// round trip for both), and a View that reads nothing sends nothing.
func (p *Postgres) View(ctx context.Context, fn func(Tx) error) error {
	return p.run(ctx, false, fn)
}

// Update implements Store. BEGIN and the writers' lock go in one round
// trip; writes are queued and sent together with the next read or with
// COMMIT, so a transaction that writes N records costs no N round trips.
func (p *Postgres) Update(ctx context.Context, fn func(Tx) error) error {
	return p.run(ctx, true, fn)
}

const (
	beginRead  = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
	beginWrite = "BEGIN ISOLATION LEVEL READ COMMITTED"
	// The writers' lock: all read-write transactions, on every replica,
	// run one after another.
	writersLock = "SELECT id FROM kms_writer WHERE id = 1 FOR UPDATE"
)

func (p *Postgres) run(ctx context.Context, write bool, fn func(Tx) error) error {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	// A connection released inside a transaction (after a failure) is
	// closed by the pool rather than reused.
	defer conn.Release()
	t := &pgTx{ctx: ctx, conn: conn.Conn(), write: write}
	if write {
		t.pending = []queued{{sql: beginWrite, what: "beginning a transaction"}, {sql: writersLock, what: "taking the writers' lock"}}
		if err := t.flush(); err != nil {
			t.rollback()
			return err
		}
	}
	if err := fn(t); err != nil {
		t.rollback()
		return err
	}
	if !t.begun && len(t.pending) == 0 {
		return nil // a View that read nothing
	}
	if !write {
		// The reads are done and consistent; the end of a read-only
		// transaction cannot change them.
		if _, err := t.conn.Exec(ctx, "COMMIT"); err != nil {
			t.rollback()
		}
		return nil
	}
	t.pending = append(t.pending, queued{sql: "COMMIT", what: "committing", commit: true})
	if err := t.flush(); err != nil {
		t.rollback()
		return err
	}
	return nil
}

// ErrOutcomeUnknown is returned when the connection to the database ended
// after COMMIT was sent and before its answer: the transaction may or may
// not have committed.
var ErrOutcomeUnknown = errors.New("the connection to the database ended during the commit; the outcome is unknown")

// dbError wraps an error of the driver. An error that shows that the
// connection failed rather than the statement (no answer from the server,
// a connection-class SQLSTATE, the server shutting down) wraps
// ErrUnavailable: the statement was not carried out and the request may go
// to another replica; the service answers it with 503 store_unavailable.
func dbError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if ConnectionFailure(err) {
		return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// ConnectionFailure reports whether err, from the driver, shows a failed
// or refused connection rather than a statement the database refused:
// SQLSTATE class 08 (connection exception), 53 (insufficient resources,
// such as too many connections) and 57P01-57P03 (the server shutting down
// or starting), or no answer of the database at all (an I/O error, a
// closed connection, a failed connect).
func ConnectionFailure(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "53") ||
			pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	return pgconn.SafeToRetry(err) || pgconn.Timeout(err) || errors.As(err, &ne) || errors.As(err, &ce) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNREFUSED)
}

// Close implements Store.
func (p *Postgres) Close() error {
	p.batch.close()
	p.pool.Close()
	return nil
}

// Pool returns the connection pool (tests).
func (p *Postgres) Pool() *pgxpool.Pool { return p.pool }

type pgTx struct {
	ctx     context.Context
	conn    *pgx.Conn
	write   bool
	begun   bool     // BEGIN was sent
	pending []queued // statements to send before the next read (or at commit)
}

type queued struct {
	sql    string
	args   []any
	what   string
	commit bool
}

// flush sends the queued statements in one round trip and checks their
// results in order.
func (t *pgTx) flush() error {
	if len(t.pending) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, q := range t.pending {
		b.Queue(q.sql, q.args...)
	}
	br := t.conn.SendBatch(t.ctx, b)
	err := t.results(br)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = dbError(t.ctx, "sending statements", cerr)
	}
	t.pending = t.pending[:0]
	return err
}

// results reads the results of the queued statements from br.
func (t *pgTx) results(br pgx.BatchResults) error {
	commits := false
	for _, q := range t.pending {
		commits = commits || q.commit
	}
	for _, q := range t.pending {
		tag, err := br.Exec()
		if q.sql == beginRead || q.sql == beginWrite {
			t.begun = err == nil
		}
		var pe *pgconn.PgError
		if err != nil && commits && !errors.As(err, &pe) && !pgconn.SafeToRetry(err) && t.ctx.Err() == nil {
			// COMMIT went out with these statements and no answer came
			// back. (An answer that is an error, such as the server's
			// own "terminating connection", means that COMMIT was not
			// carried out.)
			return fmt.Errorf("%s: %w: %v", q.what, ErrOutcomeUnknown, err)
		}
		if err != nil {
			return dbError(t.ctx, q.what, err)
		}
		if q.commit && tag.String() != "COMMIT" {
			return fmt.Errorf("committing: the database answered %q", tag.String())
		}
	}
	return nil
}

// rollback ends a failed transaction; if that fails too, the pool closes
// the connection when it is released.
func (t *pgTx) rollback() {
	if t.begun && !t.conn.IsClosed() {
		t.conn.Exec(context.Background(), "ROLLBACK")
	}
}

// queryRow runs one reading statement, preceded in the same round trip by
// BEGIN (first statement of a View) and the queued writes.
func (t *pgTx) queryRow(what, sql string, args []any, dest ...any) error {
	if !t.begun && !t.write {
		t.pending = append(t.pending, queued{sql: beginRead, what: "beginning a transaction"})
	}
	if len(t.pending) == 0 {
		if err := t.conn.QueryRow(t.ctx, sql, args...).Scan(dest...); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			return dbError(t.ctx, what, err)
		}
		return nil
	}
	b := &pgx.Batch{}
	for _, q := range t.pending {
		b.Queue(q.sql, q.args...)
	}
	b.Queue(sql, args...)
	br := t.conn.SendBatch(t.ctx, b)
	err := t.results(br)
	t.pending = t.pending[:0]
	if err == nil {
		if err = br.QueryRow().Scan(dest...); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			err = dbError(t.ctx, what, err)
		}
	}
	if cerr := br.Close(); err == nil && cerr != nil {
		err = dbError(t.ctx, what, cerr)
	}
	return err
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
	err := t.queryRow("reading "+bucket+"/"+key, "SELECT value, mac FROM kms_records WHERE bucket = $1 AND key = $2", []any{bucket, []byte(key)}, &value, &mac)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
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
	t.pending = append(t.pending, queued{sql: `INSERT INTO kms_records (bucket, key, value, mac) VALUES ($1, $2, $3, $4)
		ON CONFLICT (bucket, key) DO UPDATE SET value = EXCLUDED.value, mac = EXCLUDED.mac`,
		args: []any{bucket, []byte(key), value, mac}, what: "writing " + bucket + "/" + key})
	return nil
}

func (t *pgTx) Delete(bucket, key string) error {
	if !t.write {
		return errReadOnly
	}
	t.pending = append(t.pending, queued{sql: "DELETE FROM kms_records WHERE bucket = $1 AND key = $2",
		args: []any{bucket, []byte(key)}, what: "deleting " + bucket + "/" + key})
	return nil
}

func (t *pgTx) List(bucket, prefix string, fn func(string, []byte) error) error {
	// Queued statements (and BEGIN) first: the listing must see them.
	if !t.begun && !t.write {
		t.pending = append(t.pending, queued{sql: beginRead, what: "beginning a transaction"})
	}
	if err := t.flush(); err != nil {
		return err
	}
	p := []byte(prefix)
	rows, err := t.conn.Query(t.ctx, "SELECT key, value, mac FROM kms_records WHERE bucket = $1 AND key >= $2 ORDER BY key", bucket, p)
	if err != nil {
		return dbError(t.ctx, "listing "+bucket, err)
	}
	type rec struct{ k, v []byte }
	var recs []rec
	for rows.Next() {
		var k, v, mac []byte
		if err := rows.Scan(&k, &v, &mac); err != nil {
			rows.Close()
			return dbError(t.ctx, "listing "+bucket, err)
		}
		if !bytes.HasPrefix(k, p) {
			break
		}
		recs = append(recs, rec{k, joinEnvelope(v, mac)})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return dbError(t.ctx, "listing "+bucket, err)
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
	err := t.queryRow("reading the last record of "+bucket, "SELECT key, value, mac FROM kms_records WHERE bucket = $1 ORDER BY key DESC LIMIT 1", []any{bucket}, &k, &v, &mac)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, ErrNotFound
	}
	if err != nil {
		return "", nil, err
	}
	return string(k), joinEnvelope(v, mac), nil
}

// ReadMany implements ManyReader: the reads go out in one round trip, with
// BEGIN (or the writers' lock) and the queued writes before them.
func (t *pgTx) ReadMany(reads []Read) error {
	if !t.begun && !t.write {
		t.pending = append(t.pending, queued{sql: beginRead, what: "beginning a transaction"})
	}
	b := &pgx.Batch{}
	for _, q := range t.pending {
		b.Queue(q.sql, q.args...)
	}
	for _, r := range reads {
		if r.Last {
			b.Queue("SELECT key, value, mac FROM kms_records WHERE bucket = $1 ORDER BY key DESC LIMIT 1", r.Bucket)
		} else {
			b.Queue("SELECT $2::bytea, value, mac FROM kms_records WHERE bucket = $1 AND key = $2", r.Bucket, []byte(r.Key))
		}
	}
	br := t.conn.SendBatch(t.ctx, b)
	err := t.results(br)
	t.pending = t.pending[:0]
	for i := range reads {
		if err != nil {
			break
		}
		r := &reads[i]
		var k, v, mac []byte
		switch e := br.QueryRow().Scan(&k, &v, &mac); {
		case errors.Is(e, pgx.ErrNoRows):
			r.Err = ErrNotFound
		case e != nil:
			err = dbError(t.ctx, "reading "+r.Bucket, e)
		default:
			r.Key, r.Value = string(k), joinEnvelope(v, mac)
		}
	}
	if cerr := br.Close(); err == nil && cerr != nil {
		err = dbError(t.ctx, "reading", cerr)
	}
	return err
}

// GetOne implements OneReader: one statement, outside any transaction
// (a statement reads one consistent snapshot by itself), sent in a batch
// with those of concurrent requests (pgbatch.go).
func (p *Postgres) GetOne(ctx context.Context, bucket, key string) ([]byte, error) {
	var value, mac []byte
	err := p.batch.do(ctx, "SELECT value, mac FROM kms_records WHERE bucket = $1 AND key = $2", []any{bucket, []byte(key)}, &value, &mac)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, dbError(ctx, "reading "+bucket+"/"+key, err)
	}
	return joinEnvelope(value, mac), nil
}

// OneReader is implemented by networked stores, where a transaction costs
// round trips of its own: GetOne reads one record in one statement.
type OneReader interface {
	GetOne(ctx context.Context, bucket, key string) ([]byte, error)
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
	_, err := p.UseNonceGet(ctx, app, nonce, expires, now, "", "")
	return err
}

// NonceGetter is implemented by stores that record a nonce and read a
// record in one statement (see Postgres.UseNonceGet).
type NonceGetter interface {
	NonceStore
	UseNonceGet(ctx context.Context, app, nonce string, expires, now time.Time, bucket, key string) ([]byte, error)
}

// UseNonceGet is UseNonce that also returns, from the same statement, the
// stored record (bucket, key), or nil when there is none: the key service
// checks an app's credential as of the moment its nonce is recorded, in
// one round trip, shared with concurrent requests (pgbatch.go).
func (p *Postgres) UseNonceGet(ctx context.Context, app, nonce string, expires, now time.Time, bucket, key string) ([]byte, error) {
	var used int
	var value, mac []byte
	err := p.batch.do(ctx, `WITH n AS (
			INSERT INTO kms_nonces (app, nonce, expires) VALUES ($1, $2, $3)
			ON CONFLICT (app, nonce) DO UPDATE SET expires = EXCLUDED.expires WHERE kms_nonces.expires <= $4
			RETURNING 1)
		SELECT (SELECT count(*) FROM n)::int, r.value, r.mac
		FROM (SELECT 1) AS one LEFT JOIN kms_records r ON r.bucket = $5 AND r.key = $6`,
		[]any{app, nonce, expires, now, bucket, []byte(key)}, &used, &value, &mac)
	if err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) && ctx.Err() == nil {
			// Not an answer of the database: the nonce was not recorded
			// and the request is refused unexecuted.
			return nil, fmt.Errorf("%w: recording the request nonce: %v", ErrUnavailable, err)
		}
		return nil, dbError(ctx, "recording the request nonce", err)
	}
	if used == 0 {
		return nil, ErrNonceUsed
	}
	if last := p.lastSweep.Load(); now.UnixNano()-last > int64(10*time.Second) && p.lastSweep.CompareAndSwap(last, now.UnixNano()) {
		p.pool.Exec(ctx, "DELETE FROM kms_nonces WHERE expires <= $1", now)
	}
	if value == nil {
		return nil, nil
	}
	return joinEnvelope(value, mac), nil
}
