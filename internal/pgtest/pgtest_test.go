package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestStartStop(t *testing.T) {
	s := Start(t)
	url := s.NewDatabase(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	c.Close(ctx)
	s.Stop()
	select {
	case <-s.done:
	default:
		t.Fatal("server still running after Stop")
	}
	if _, err := pgx.Connect(ctx, url); err == nil {
		t.Fatal("connected after Stop")
	}
}

// TestRestart: a fast restart ends open sessions, keeps the data and the
// port, and PIDs lists the new server and its children.
func TestRestart(t *testing.T) {
	s := Start(t)
	url := s.NewDatabase(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	old := s.PIDs()
	s.Restart(t)
	if err := c.Ping(ctx); err == nil {
		t.Fatal("a session opened before the restart still answers")
	}
	c2, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	var v int
	if err := c2.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != 7 {
		t.Fatalf("after restart: %d, %v", v, err)
	}
	if now := s.PIDs(); len(now) < 2 || now[0] == old[0] {
		t.Fatalf("PIDs before %v, after %v", old, now)
	}
}
