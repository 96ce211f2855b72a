package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// progressThreshold is the input size above which a progress bar is drawn.
const progressThreshold = 8 << 20

// progress draws a one-line progress bar on stderr when it is a terminal.
// It is an io.Writer-compatible counter: Add reports bytes done.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	total int64 // <= 0: unknown
	done  int64
	start time.Time
	last  time.Time
	on    bool
}

// newProgress returns a progress bar that draws only if env.Stderr is a
// terminal and total is unknown (-1) or at least progressThreshold.
func newProgress(env *Env, label string, total int64) *progress {
	p := &progress{w: env.Stderr, label: label, total: total, start: time.Now()}
	if f, ok := env.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.on = total < 0 || total >= progressThreshold
	}
	return p
}

func (p *progress) Add(n int64) {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	now := time.Now()
	if now.Sub(p.last) < 150*time.Millisecond {
		return
	}
	p.last = now
	p.draw(now)
}

// Write counts len(b); it lets progress sit in an io.MultiWriter or TeeReader.
func (p *progress) Write(b []byte) (int, error) { p.Add(int64(len(b))); return len(b), nil }

func (p *progress) draw(now time.Time) {
	rate := float64(p.done) / now.Sub(p.start).Seconds() / (1 << 20)
	if p.total > 0 {
		frac := float64(p.done) / float64(p.total)
		if frac > 1 {
			frac = 1
		}
		const width = 30
		n := int(frac * width)
		bar := make([]byte, width)
		for i := range bar {
			if i < n {
				bar[i] = '='
			} else {
				bar[i] = ' '
			}
		}
		fmt.Fprintf(p.w, "\r%s [%s] %3.0f%% %s/%s %.0f MB/s ", p.label, bar, frac*100, human(p.done), human(p.total), rate)
	} else {
		fmt.Fprintf(p.w, "\r%s %s %.0f MB/s ", p.label, human(p.done), rate)
	}
}

// Done clears the bar.
func (p *progress) Done() {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprint(p.w, "\r\033[K")
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
