package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Messages between the supervisor and the sandbox's init travel as JSON
// over a SOCK_SEQPACKET socket pair, one message per packet; file
// descriptors (a spawned program's stdin, stdout, stderr) ride along as
// SCM_RIGHTS.
type message struct {
	Op     string   `json:"op"` // spawn, signal, ps | ready, spawned, exit, error, procs
	ID     int      `json:"id,omitempty"`
	PID    int      `json:"pid,omitempty"`
	Sig    int      `json:"sig,omitempty"`
	Status int      `json:"status,omitempty"`
	Cmd    *Command `json:"cmd,omitempty"`
	Error  string   `json:"error,omitempty"`
	Procs  []Proc   `json:"procs,omitempty"`
}

// Proc is a process running in the sandbox, as its init sees it.
type Proc struct {
	PID  int      `json:"pid"` // inside the sandbox's PID namespace
	Args []string `json:"args"`
	Main bool     `json:"main,omitempty"`
}

const maxMessage = 1 << 16

// conn is one end of the control socket.
type conn struct {
	fd int
	mu sync.Mutex
}

func (c *conn) send(m *message, files ...*os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxMessage {
		return fmt.Errorf("control message of %d bytes too large", len(b))
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return unix.Sendmsg(c.fd, b, oob, nil, 0)
}

// recv returns the next message and any descriptors that came with it.
func (c *conn) recv() (*message, []*os.File, error) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return nil, nil, err
	}
	if n == 0 {
		return nil, nil, errClosed
	}
	var files []*os.File
	if oobn > 0 {
		scms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, nil, err
		}
		for _, scm := range scms {
			fds, err := unix.ParseUnixRights(&scm)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				files = append(files, os.NewFile(uintptr(fd), "passed"))
			}
		}
	}
	m := &message{}
	if err := json.Unmarshal(buf[:n], m); err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, fmt.Errorf("decoding control message: %w", err)
	}
	return m, files, nil
}

var errClosed = fmt.Errorf("control socket closed")
