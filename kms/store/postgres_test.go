package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/pgtest"
)

func TestPostgresMigrations(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()

	t.Run("FromEmpty", func(t *testing.T) {
		url := srv.NewDatabase(t)
		s, err := OpenPostgres(ctx, url, PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v, err := s.SchemaVersion(ctx); err != nil || v != SchemaVersion {
			t.Fatalf("schema version %d, %v; want %d", v, err, SchemaVersion)
		}
		s.Close()
		// Opening again is a no-op.
		s, err = OpenPostgres(ctx, url, PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var n int
		if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM kms_schema_version").Scan(&n); err != nil || n != 1 {
			t.Fatalf("kms_schema_version has %d rows, %v", n, err)
		}
	})

	t.Run("FromVersion1", func(t *testing.T) {
		url := srv.NewDatabase(t)
		s, err := OpenPostgres(ctx, url, PostgresOptions{TargetVersion: 1})
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := s.SchemaVersion(ctx); v != 1 {
			t.Fatalf("schema version %d, want 1", v)
		}
		sealed := SealValue(make([]byte, 32), "keys", "k", []byte("v"))
		if err := s.Update(ctx, func(tx Tx) error { return tx.Put("keys", "k", sealed) }); err != nil {
			t.Fatal(err)
		}
		if err := s.UseNonce(ctx, "a1", "n1", time.Now().Add(time.Minute), time.Now()); err == nil {
			t.Fatal("version 1 has nonces")
		}
		s.Close()

		s, err = OpenPostgres(ctx, url, PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if v, _ := s.SchemaVersion(ctx); v != SchemaVersion {
			t.Fatalf("schema version %d after migration, want %d", v, SchemaVersion)
		}
		err = s.View(ctx, func(tx Tx) error {
			v, err := tx.Get("keys", "k")
			if err != nil {
				return err
			}
			_, err = OpenValue(make([]byte, 32), "keys", "k", v)
			return err
		})
		if err != nil {
			t.Fatalf("record written at version 1 after migration: %v", err)
		}
		now := time.Now()
		if err := s.UseNonce(ctx, "a1", "n1", now.Add(time.Minute), now); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("RefusesNewerSchema", func(t *testing.T) {
		url := srv.NewDatabase(t)
		s, err := OpenPostgres(ctx, url, PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Pool().Exec(ctx, "UPDATE kms_schema_version SET version = 99"); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if _, err := OpenPostgres(ctx, url, PostgresOptions{}); !errors.Is(err, ErrSchemaTooNew) {
			t.Fatalf("opening a newer schema: %v, want ErrSchemaTooNew", err)
		}
	})
}

func TestPostgresNonces(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	url := srv.NewDatabase(t)
	// Two stores on one database stand for two replicas.
	a, err := OpenPostgres(ctx, url, PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := OpenPostgres(ctx, url, PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	now := time.Now()
	if err := a.UseNonce(ctx, "a1", "nonce-1", now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if err := b.UseNonce(ctx, "a1", "nonce-1", now.Add(time.Minute), now); !errors.Is(err, ErrNonceUsed) {
		t.Fatalf("replay on the other replica: %v, want ErrNonceUsed", err)
	}
	if err := b.UseNonce(ctx, "a2", "nonce-1", now.Add(time.Minute), now); err != nil {
		t.Fatalf("same nonce, other app: %v", err)
	}
	later := now.Add(2 * time.Minute)
	if err := b.UseNonce(ctx, "a1", "nonce-1", later.Add(time.Minute), later); err != nil {
		t.Fatalf("expired nonce reused: %v", err)
	}
}
