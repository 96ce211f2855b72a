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
