package seal

import (
	"runtime"
	"sync"
)

// task is one segment moving through a pipeline.
type task struct {
	idx   uint64
	in    []byte // input: plaintext (sealing) or a record (opening)
	out   []byte // output: a record (sealing) or plaintext (opening)
	nonce [nonceLen]byte
	tail  bool  // opening: the input's last, short read (no record to open)
	err   error // set by the worker (opening: authentication failed) or the producer (read error)
	done  chan struct{}
}

// pipeline runs fn over tasks on several goroutines and hands them back in
// submission order, so sealing and opening use every core while the output
// stays sequential. Its queues are bounded: at most 2*workers tasks in flight.
type pipeline struct {
	work  chan *task
	order chan *task
	wg    sync.WaitGroup
}

func newPipeline(workers int, fn func(*task)) *pipeline {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	p := &pipeline{
		work:  make(chan *task, workers),
		order: make(chan *task, 2*workers),
	}
	p.wg.Add(workers)
	for i := 0; i < workers; i++ {
		go func() {
			defer p.wg.Done()
			for t := range p.work {
				if t.err == nil && !t.tail {
					fn(t)
				}
				close(t.done)
			}
		}()
	}
	return p
}

// submit queues t; it blocks while the pipeline is full.
func (p *pipeline) submit(t *task) {
	t.done = make(chan struct{})
	p.order <- t
	p.work <- t
}

// close stops the workers after the queued tasks; order is closed too, so a
// consumer ranging over it ends.
func (p *pipeline) close() {
	close(p.work)
	close(p.order)
}

// bufPool recycles segment-sized buffers.
type bufPool struct{ p sync.Pool }

func newBufPool(size int) *bufPool {
	return &bufPool{p: sync.Pool{New: func() any { b := make([]byte, size); return &b }}}
}

func (b *bufPool) get() []byte  { return (*b.p.Get().(*[]byte))[:0] }
func (b *bufPool) put(s []byte) { s = s[:0]; b.p.Put(&s) }
