package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/veil-tee/veil/internal/pgtest"
)

// The store contract: one suite, run against every backend.

type backend struct {
	name string
	open func(t *testing.T) Store
}

func backends(t *testing.T) []backend {
	var srv *pgtest.Server
	return []backend{
		{"bolt", func(t *testing.T) Store {
			s, err := OpenBolt(t.TempDir(), BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
		{"postgres", func(t *testing.T) Store {
			if srv == nil {
				srv = pgtest.Start(t)
			}
			s, err := OpenPostgres(context.Background(), srv.NewDatabase(t), PostgresOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
	}
}

func TestStoreContract(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			// The PostgreSQL server starts in this subtest's scope and
			// stops when its cases are done.
			s := b.open(t)
			for _, c := range contractCases {
				t.Run(c.name, func(t *testing.T) {
					clear(t, s)
					c.fn(t, s)
				})
			}
			t.Run("ConcurrentWriters", func(t *testing.T) { contractConcurrent(t, s) })
		})
	}
}

// clear empties every bucket.
func clear(t *testing.T, s Store) {
	t.Helper()
	err := s.Update(context.Background(), func(tx Tx) error {
		for _, b := range Buckets() {
			var keys []string
			if err := tx.List(b, "", func(k string, _ []byte) error { keys = append(keys, k); return nil }); err != nil {
				return err
			}
			for _, k := range keys {
				if err := tx.Delete(b, k); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func put(t *testing.T, s Store, bucket string, kv ...string) {
	t.Helper()
	err := s.Update(context.Background(), func(tx Tx) error {
		for i := 0; i < len(kv); i += 2 {
			if err := tx.Put(bucket, kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, s Store, bucket, key string) ([]byte, error) {
	t.Helper()
	var out []byte
	err := s.View(context.Background(), func(tx Tx) error {
		v, err := tx.Get(bucket, key)
		out = bytes.Clone(v)
		return err
	})
	return out, err
}

func list(t *testing.T, s Store, bucket, prefix string) []string {
	t.Helper()
	var out []string
	err := s.View(context.Background(), func(tx Tx) error {
		return tx.List(bucket, prefix, func(k string, v []byte) error { out = append(out, k+"="+string(v)); return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var errStop = errors.New("stop")

var contractCases = []struct {
	name string
	fn   func(t *testing.T, s Store)
}{
	{"GetMissing", func(t *testing.T, s Store) {
		if _, err := get(t, s, "keys", "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
		}
	}},
	{"PutGetOverwrite", func(t *testing.T, s Store) {
		put(t, s, "keys", "k", "v1")
		put(t, s, "apps", "k", "other bucket")
		if v, err := get(t, s, "keys", "k"); err != nil || string(v) != "v1" {
			t.Fatalf("Get = %q, %v", v, err)
		}
		put(t, s, "keys", "k", "v2")
		if v, err := get(t, s, "keys", "k"); err != nil || string(v) != "v2" {
			t.Fatalf("Get after overwrite = %q, %v", v, err)
		}
		if v, _ := get(t, s, "apps", "k"); string(v) != "other bucket" {
			t.Fatalf("buckets are not separate: %q", v)
		}
	}},
	{"EmptyAndBinaryValues", func(t *testing.T, s Store) {
		mac := make([]byte, 32)
		mac[5] = 9
		sealed := SealValue(mac, "keys", "s", []byte("secret value"))
		vals := map[string][]byte{
			"empty":     {},
			"binary":    {0, 0xff, 1, 2},
			"sealed":    sealed,
			"short01":   {envelopeV1, 2, 3},                              // looks like an envelope but too short
			"sealedish": append([]byte{envelopeV1}, make([]byte, 32)...), // an envelope with an empty value
		}
		err := s.Update(context.Background(), func(tx Tx) error {
			for k, v := range vals {
				if err := tx.Put("keys", k, v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range vals {
			got, err := get(t, s, "keys", k)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: Get = %x, %v; want %x", k, got, err, want)
			}
		}
		if got, _ := get(t, s, "keys", "sealed"); true {
			if v, err := OpenValue(mac, "keys", "s", got); err != nil || string(v) != "secret value" {
				t.Errorf("sealed record does not open after a round trip: %q, %v", v, err)
			}
		}
	}},
	{"Delete", func(t *testing.T, s Store) {
		put(t, s, "keys", "a", "1", "b", "2")
		err := s.Update(context.Background(), func(tx Tx) error {
			if err := tx.Delete("keys", "a"); err != nil {
				return err
			}
			return tx.Delete("keys", "never-there") // not an error
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := get(t, s, "keys", "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted key: %v", err)
		}
		if v, _ := get(t, s, "keys", "b"); string(v) != "2" {
			t.Fatalf("other key: %q", v)
		}
	}},
	{"ListPrefixByteOrder", func(t *testing.T, s Store) {
		put(t, s, "names", "b/2", "x", "a/1", "y", "a/0", "z", "a", "w", "a/\xff", "hi", "A/9", "up", "ab", "q")
		got := fmt.Sprint(list(t, s, "names", "a/"))
		if want := fmt.Sprint([]string{"a/0=z", "a/1=y", "a/\xff=hi"}); got != want {
			t.Fatalf("List(a/) = %s, want %s", got, want)
		}
		all := list(t, s, "names", "")
		if len(all) != 7 || all[0] != "A/9=up" || all[6] != "b/2=x" {
			t.Fatalf("List() = %q", all)
		}
		if got := list(t, s, "names", "zz"); len(got) != 0 {
			t.Fatalf("List(zz) = %q", got)
		}
	}},
	{"ListStopsAtError", func(t *testing.T, s Store) {
		put(t, s, "keys", "1", "a", "2", "b", "3", "c")
		n := 0
		err := s.View(context.Background(), func(tx Tx) error {
			return tx.List("keys", "", func(string, []byte) error {
				n++
				if n == 2 {
					return errStop
				}
				return nil
			})
		})
		if !errors.Is(err, errStop) || n != 2 {
			t.Fatalf("List: err %v after %d calls, want errStop after 2", err, n)
		}
	}},
	{"ListCallbackReadsInTx", func(t *testing.T, s Store) {
		put(t, s, "names", "x", "k1", "y", "k2")
		put(t, s, "keys", "k1", "one", "k2", "two")
		var got []string
		err := s.Update(context.Background(), func(tx Tx) error {
			return tx.List("names", "", func(_ string, v []byte) error {
				kv, err := tx.Get("keys", string(v))
				got = append(got, string(kv))
				if err != nil {
					return err
				}
				return tx.Put("secrets", string(v), kv)
			})
		})
		if err != nil || fmt.Sprint(got) != "[one two]" {
			t.Fatalf("nested reads: %q, %v", got, err)
		}
		if v, _ := get(t, s, "secrets", "k2"); string(v) != "two" {
			t.Fatalf("write inside List: %q", v)
		}
	}},
	{"Last", func(t *testing.T, s Store) {
		err := s.View(context.Background(), func(tx Tx) error {
			_, _, err := tx.Last("audit")
			return err
		})
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("Last of an empty bucket: %v", err)
		}
		put(t, s, "audit", "00000000000000000002", "two", "00000000000000000010", "ten", "00000000000000000001", "one")
		err = s.View(context.Background(), func(tx Tx) error {
			k, v, err := tx.Last("audit")
			if err != nil || k != "00000000000000000010" || string(v) != "ten" {
				return fmt.Errorf("Last = %q %q %v", k, v, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}},
	{"Rollback", func(t *testing.T, s Store) {
		put(t, s, "keys", "kept", "old")
		err := s.Update(context.Background(), func(tx Tx) error {
			if err := tx.Put("keys", "kept", []byte("new")); err != nil {
				return err
			}
			if err := tx.Put("keys", "added", []byte("x")); err != nil {
				return err
			}
			if err := tx.Delete("keys", "kept"); err != nil {
				return err
			}
			// Visible inside the transaction...
			if _, err := tx.Get("keys", "added"); err != nil {
				return fmt.Errorf("own write invisible: %w", err)
			}
			return errStop
		})
		if !errors.Is(err, errStop) {
			t.Fatalf("Update returned %v, want fn's error", err)
		}
		// ...and gone after the rollback.
		if v, err := get(t, s, "keys", "kept"); err != nil || string(v) != "old" {
			t.Fatalf("rolled-back overwrite/delete: %q, %v", v, err)
		}
		if _, err := get(t, s, "keys", "added"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("rolled-back insert: %v", err)
		}
	}},
	{"CancelledContext", func(t *testing.T, s Store) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := s.Update(ctx, func(tx Tx) error { return tx.Put("keys", "c", []byte("x")) })
		if err == nil {
			t.Fatal("Update with a cancelled context succeeded")
		}
		if _, err := get(t, s, "keys", "c"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("write under a cancelled context was committed: %v", err)
		}
	}},
}

// contractConcurrent runs read-modify-write transactions from several
// goroutines: no increment may be lost, and readers see committed states
// only (the two counters always equal).
func contractConcurrent(t *testing.T, s Store) {
	clear(t, s)
	put(t, s, "meta", "a", "0", "b", "0")
	const writers, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers+1)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				err := s.Update(context.Background(), func(tx Tx) error {
					for _, k := range []string{"a", "b"} {
						v, err := tx.Get("meta", k)
						if err != nil {
							return err
						}
						n, _ := strconv.Atoi(string(v))
						if err := tx.Put("meta", k, []byte(strconv.Itoa(n+1))); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			err := s.View(context.Background(), func(tx Tx) error {
				a, err := tx.Get("meta", "a")
				if err != nil {
					return err
				}
				b, err := tx.Get("meta", "b")
				if err != nil {
					return err
				}
				if string(a) != string(b) {
					return fmt.Errorf("a reader saw a half-committed transaction: a=%s b=%s", a, b)
				}
				return nil
			})
			if err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	rwg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if v, _ := get(t, s, "meta", k); string(v) != strconv.Itoa(writers*each) {
			t.Fatalf("%s = %s after %d increments: writes were lost", k, v, writers*each)
		}
	}
}
