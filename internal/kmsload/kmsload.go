// Package kmsload drives a key service with concurrent clients for a fixed
// time and measures what they got: operations per second, latency
// percentiles, errors and (from /proc) CPU time per operation. It backs
// scripts/kmsload and the load tests of kms/e2e.
package kmsload

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/veil-tee/veil/kms/client"
)

// Config says what to drive.
type Config struct {
	URL        string // one address, or several separated by commas
	CAPEM      []byte
	AdminToken string        // used to enroll the load's app
	Clients    int           // concurrent clients, each with its own connection
	Duration   time.Duration // how long to run
	// Mix is the share of operations that create a key (the rest unwrap a
	// data key), in percent.
	MixCreate int
	// ServerPIDs are the processes whose CPU time counts with the
	// client's.
	ServerPIDs []int
	// Lean makes each client send its unwraps itself over its own
	// kept-alive TLS connection (HTTP/1.1 written and read directly, the
	// answer decoded and checked) instead of through kms/client, whose
	// http.Transport costs the client about as much CPU as the server
	// spends on the request: on one machine, a lighter client leaves more
	// of it to the server. Key creations (MixCreate) still go through
	// kms/client.
	Lean bool
	// Rate, when positive, makes the load open-loop: the clients together
	// send Rate operations per second, each client at fixed intervals
	// (Clients/Rate seconds, staggered), whatever the answers' latency.
	// Latency is then measured from when an operation was due, not from
	// when it was sent, so that a server falling behind is charged for the
	// waiting it causes. Zero: each client sends its next operation as soon
	// as the last is answered (closed loop), where by Little's law the mean
	// latency is Clients divided by the throughput.
	Rate float64
}

// Result is what a run measured.
type Result struct {
	Ops, Errors   int64
	Elapsed       time.Duration
	P50, P99, Max time.Duration
	CPU           time.Duration // server processes and this process
	FirstError    string
}

// OpsPerSec is the throughput.
func (r Result) OpsPerSec() float64 { return float64(r.Ops) / r.Elapsed.Seconds() }

// CPUPerOp is the CPU time of server and client per operation.
func (r Result) CPUPerOp() time.Duration {
	if r.Ops == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Ops)
}

func (r Result) String() string {
	return fmt.Sprintf("%d ops in %s: %.0f ops/s, p50 %s, p99 %s, max %s, %d errors, CPU %s per op",
		r.Ops, r.Elapsed.Round(time.Millisecond), r.OpsPerSec(), r.P50.Round(10*time.Microsecond),
		r.P99.Round(10*time.Microsecond), r.Max.Round(100*time.Microsecond), r.Errors, r.CPUPerOp().Round(time.Microsecond))
}

// Run enrolls apps (one per ten clients), creates a key and a data key for
// each, then runs the load.
func Run(ctx context.Context, c Config) (Result, error) {
	if c.Clients < 1 {
		c.Clients = 1
	}
	// One app per ten clients: the server remembers at most 100,000
	// nonces per app within the replay window (docs/kms.md), so one app
	// alone would be refused after 100,000 requests in that window.
	apps, err := setupApps(ctx, c.URL, c.CAPEM, c.AdminToken, (c.Clients+9)/10)
	if err != nil {
		return Result{}, err
	}
	var (
		mu    sync.Mutex
		lat   []time.Duration
		res   Result
		wg    sync.WaitGroup
		first string
	)
	cpu0 := cpuTime(c.ServerPIDs)
	start := time.Now()
	deadline := start.Add(c.Duration)
	addrs := strings.Split(c.URL, ",")
	for w := range c.Clients {
		// With several addresses each client starts at a different one, so
		// the load is spread over them.
		rot := append(append([]string{}, addrs[w%len(addrs):]...), addrs[:w%len(addrs)]...)
		app := apps[w%len(apps)]
		cl, err := client.New(client.Config{URL: strings.Join(rot, ","), CAPEM: c.CAPEM, AppID: app.id, APIKey: app.key, Timeout: 30 * time.Second})
		if err != nil {
			return Result{}, err
		}
		defer cl.Close()
		var lean *leanClient
		if c.Lean {
			if lean, err = dialLean(rot[0], c.CAPEM, app.id, app.key, app.ct, app.pt); err != nil {
				return Result{}, err
			}
			defer lean.close()
		}
		var every time.Duration
		var due time.Time
		if c.Rate > 0 {
			every = time.Duration(float64(c.Clients) / c.Rate * float64(time.Second))
			due = start.Add(every * time.Duration(w) / time.Duration(c.Clients))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var my []time.Duration
			var errs int64
			var ferr string
			for i := 0; i < 100_000_000 && time.Now().Before(deadline); i++ { // bounded by the deadline
				t0 := time.Now()
				if every > 0 {
					if due.After(deadline) {
						break
					}
					time.Sleep(time.Until(due))
					t0 = due
					due = due.Add(every)
				}
				var err error
				if c.MixCreate > 0 && i%100 < c.MixCreate {
					_, err = cl.CreateKey(ctx, fmt.Sprintf("k%d-%d", w, i), "", "")
				} else if lean != nil {
					err = lean.decrypt()
				} else {
					_, err = cl.Decrypt(ctx, app.ct, nil)
				}
				if err != nil {
					errs++
					if ferr == "" {
						ferr = err.Error()
					}
					continue
				}
				my = append(my, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, my...)
			res.Errors += errs
			if first == "" {
				first = ferr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.CPU = cpuTime(c.ServerPIDs) - cpu0
	res.FirstError = first
	res.Ops = int64(len(lat))
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		res.P50 = lat[len(lat)/2]
		res.P99 = lat[len(lat)*99/100]
		res.Max = lat[len(lat)-1]
	}
	return res, nil
}

// loadApp is an enrolled app with a data key of its own to unwrap.
type loadApp struct {
	id, key string
	ct, pt  []byte
}

// setupApps enrolls n apps through the admin API and creates a key and a
// data key for each.
func setupApps(ctx context.Context, url string, caPEM []byte, adminToken string, n int) ([]loadApp, error) {
	adm, err := client.New(client.Config{URL: url, CAPEM: caPEM, AdminToken: adminToken})
	if err != nil {
		return nil, err
	}
	defer adm.Close()
	var apps []loadApp
	for a := 0; a < n; a++ {
		enr, err := adm.Enroll(ctx, fmt.Sprintf("load-%d-%d", time.Now().UnixNano(), a))
		if err != nil {
			return nil, fmt.Errorf("enrolling the load's app: %w", err)
		}
		setup, err := client.New(client.Config{URL: url, CAPEM: caPEM, AppID: enr.AppID, APIKey: enr.APIKey})
		if err != nil {
			return nil, err
		}
		k, err := setup.CreateKey(ctx, "load", "", "")
		if err != nil {
			setup.Close()
			return nil, fmt.Errorf("creating the load's key: %w", err)
		}
		dk, err := setup.GenerateDataKey(ctx, k.ID, 32, nil)
		setup.Close()
		if err != nil {
			return nil, fmt.Errorf("generating the load's data key: %w", err)
		}
		apps = append(apps, loadApp{enr.AppID, enr.APIKey, dk.Ciphertext, dk.Plaintext})
	}
	return apps, nil
}

// cpuTime is the user+system time of this process and of pids, from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func cpuTime(pids []int) time.Duration {
	var d time.Duration
	for _, p := range append([]int{os.Getpid()}, pids...) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		d += time.Duration(u+st) * 10 * time.Millisecond
	}
	return d
}
