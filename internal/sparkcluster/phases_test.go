package sparkcluster

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// phases logs how long each phase of a test took, for finding where its
// time goes (the log only: no test asserts a time).
type phases struct {
	t     *testing.T
	start time.Time
}

func newPhases(t *testing.T) *phases { return &phases{t: t, start: time.Now()} }

// done logs that the phase name, begun at since, is over.
func (p *phases) done(name string, since time.Time) {
	p.t.Helper()
	p.t.Logf("phase %-58s %6.1f s (ends at %6.1f s)", name+":", time.Since(since).Seconds(), time.Since(p.start).Seconds())
}

// took logs the phase name, which took secs seconds (a number as text).
func (p *phases) took(name, secs string) {
	p.t.Helper()
	f, _ := strconv.ParseFloat(secs, 64)
	p.t.Logf("phase %-58s %6.1f s", name+":", f)
}

// marks records when a role's output first matched each of a set of
// patterns (polled every 100 ms while it runs).
type marks struct {
	start time.Time
	mu    sync.Mutex
	seen  map[string]time.Duration
	done  chan struct{}
}

// watch starts recording, for r, when each pattern first appears in its
// output, from now on.
func watch(r *Role, patterns ...string) *marks {
	m := &marks{start: time.Now(), seen: map[string]time.Duration{}, done: make(chan struct{})}
	res := make([]*regexp.Regexp, len(patterns))
	for i, p := range patterns {
		res[i] = regexp.MustCompile(p)
	}
	go func() {
		defer close(m.done)
		f, err := os.Open(r.Log)
		if err != nil {
			return
		}
		defer f.Close()
		var buf []byte
		chunk := make([]byte, 1<<16)
		for {
			ended := !r.Running()
			for {
				n, _ := f.Read(chunk)
				if n == 0 {
					break
				}
				buf = append(buf, chunk[:n]...)
			}
			m.mu.Lock()
			for i, re := range res {
				if _, ok := m.seen[patterns[i]]; !ok && re.Match(buf) {
					m.seen[patterns[i]] = time.Since(m.start)
				}
			}
			all := len(m.seen) == len(res)
			m.mu.Unlock()
			if ended || all {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return m
}

// at is when pattern first appeared, since watch (-1 if it did not);
// the watch, which polls on its own, gets up to a second to see it.
func (m *marks) at(pattern string) float64 {
	get := func() (time.Duration, bool) {
		m.mu.Lock()
		defer m.mu.Unlock()
		d, ok := m.seen[pattern]
		return d, ok
	}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		if d, ok := get(); ok {
			return d.Seconds()
		}
		select {
		case <-m.done:
			deadline = time.Time{}
		case <-time.After(50 * time.Millisecond):
		}
	}
	if d, ok := get(); ok {
		return d.Seconds()
	}
	return -1
}

// driverMarks are the driver's milestones: its JVM starts (after veil
// run's start-up: attestation, keys, mounts), the application has its
// executors' scheduler, the first job starts.
var driverMarks = []string{`Running Spark version`, `SchedulerBackend is ready for scheduling`, `Starting job`}

// driver describes a driver's milestones, once it has ended.
func (m *marks) driver() string {
	<-m.done
	return fmt.Sprintf("(veil to JVM %.1f s, JVM to scheduler ready %.1f s, first job at %.1f s)",
		m.at(driverMarks[0]), m.at(driverMarks[1])-m.at(driverMarks[0]), m.at(driverMarks[2]))
}

// batchMarks are the starts of the batch's four jobs (jobs/batch.py), and
// tpchDone the end of TPC-H.
var batchMarks = []string{"batch: 1 people_query start", "batch: 2 multi_party start", "batch: 3 tpch start", "batch: 4 people_query start"}

const tpchDone = "batch: 3 tpch done"

// waitLogAfter waits up to timeout until the role's output, from the
// first line holding marker on, matches re; the test fails if the role
// ends first or the time is up.
func (r *Role) waitLogAfter(t *testing.T, marker, re string, timeout time.Duration) {
	t.Helper()
	rx := regexp.MustCompile(re)
	for deadline := time.Now().Add(timeout); ; {
		running := r.Running()
		if s := section(r.Output(), marker, ""); s != "" && rx.MatchString(s) {
			return
		}
		if !running {
			t.Fatalf("%s ended (%v) before its output after %q matched %q", r.Name, r.Err(), marker, re)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no output after %q matching %q within %v", r.Name, marker, re, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// section is the part of out from the first occurrence of from to the
// first occurrence of to after it (to the end if to is empty or absent);
// empty if from does not occur.
func section(out, from, to string) string {
	i := strings.Index(out, from)
	if i < 0 {
		return ""
	}
	out = out[i:]
	if j := strings.Index(out, to); to != "" && j >= 0 {
		out = out[:j]
	}
	return out
}
