package seal

import (
	"runtime"
	"sync"
)

// batchBytes is the plaintext a pipeline task carries (whole segments, at
// least one): large enough to amortise hand-offs between goroutines.
var batchBytes = 256 << 10

func segmentsPerBatch(segSize int) int { return max(1, batchBytes/segSize) }

// task is a batch of consecutive segments moving through a pipeline.
type task struct {
	idx    uint64 // index of the first segment
	in     []byte // input: plaintext (sealing) or records (opening)
	out    []byte // output: records (sealing) or plaintext (opening)
	nonces []byte // sealing: one nonce per segment, drawn in order by the producer
	pooled bool   // in is a pool buffer (not borrowed from the caller)

	// Opening.
	tail   bool  // the input's last, short read
	nOK    int   // leading records that authenticated
	failed bool  // the record after the nOK-th failed to authenticate
	err    error // a read error (set by the producer)

	done chan struct{}
}

// pipeline runs fn over tasks on several goroutines and hands them back in
// submission order, so sealing and opening use every core while the output
// stays sequential. Its queues are bounded: at most 2*workers tasks in flight.
// Its workers run from newPipeline until close; wait returns once they all
// returned.
type pipeline struct {
	work    chan *task
	order   chan *task
	workers sync.WaitGroup
}

func newPipeline(workers int, fn func(*task)) *pipeline {
	if workers <= 0 {
		// Two per core: a worker waiting on a hand-off leaves its core to
		// the other (measured: +25-35% over one per core on 2 cores).
		workers = 2 * runtime.GOMAXPROCS(0)
	}
	p := &pipeline{
		work:  make(chan *task, workers),
		order: make(chan *task, 2*workers),
	}
	for i := 0; i < workers; i++ {
		p.workers.Go(func() {
			for t := range p.work {
				if t.err == nil {
					fn(t)
				}
				close(t.done)
			}
		})
	}
	return p
}

// submit queues t; it blocks while the pipeline is full.
func (p *pipeline) submit(t *task) {
	t.done = make(chan struct{})
	p.order <- t
	p.work <- t
}

// close stops the workers after the queued tasks and closes order, so a
// consumer ranging over it ends.
func (p *pipeline) close() {
	close(p.work)
	close(p.order)
}

// wait returns when every worker returned (after close).
func (p *pipeline) wait() { p.workers.Wait() }

// bufPool recycles batch-sized buffers.
type bufPool struct {
	p    sync.Pool
	size int
}

func newBufPool(size int) *bufPool {
	bp := &bufPool{size: size}
	bp.p.New = func() any { b := make([]byte, size); return &b }
	return bp
}

func (b *bufPool) get() []byte { return (*b.p.Get().(*[]byte))[:0] }

func (b *bufPool) put(s []byte) {
	if cap(s) == b.size {
		s = s[:0]
		b.p.Put(&s)
	}
}
