package instance

import (
	"bufio"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/veil-tee/veil/fusefs"
	"golang.org/x/sys/unix"
)

// CleanStale removes what a run or supervisor that died without cleaning
// up (kill -9, a crash) left under dir/run: mounts are detached and the
// run directories of dead processes removed, so the next run starts clean.
func CleanStale(dir string, log *slog.Logger) {
	runDir := filepath.Join(dir, "run")
	ents, err := os.ReadDir(runDir)
	if err != nil {
		return
	}
	mounts := mountsUnder(runDir)
	// A FUSE mount whose server died answers ENOTCONN: detach it, whoever
	// owned it.
	for _, m := range mounts {
		if _, err := os.Stat(m); errors.Is(err, syscall.ENOTCONN) {
			abortFUSE(m)
			unix.Unmount(m, unix.MNT_DETACH)
		}
	}
	for _, e := range ents {
		pid, ok := runPID(e.Name())
		if !ok || alive(pid) {
			continue
		}
		base := filepath.Join(runDir, e.Name())
		var mine []string
		for _, m := range mounts {
			if m == base || strings.HasPrefix(m, base+"/") {
				mine = append(mine, m)
			}
		}
		sort.Slice(mine, func(i, j int) bool { return len(mine[i]) > len(mine[j]) })
		for _, m := range mine {
			abortFUSE(m)
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
				log.Warn("detaching a stale mount", "mount", m, "err", err)
			}
		}
		if err := removeRunDir(base); err != nil {
			log.Warn("removing a stale run directory", "dir", base, "err", err)
		} else {
			log.Info("cleaned up after a run that did not finish", "dir", base, "mounts", len(mine))
		}
	}
}

// runPID parses the owner of a run directory: r-PID (a run) or s-PID (a supervisor).
func runPID(name string) (int, bool) {
	if len(name) < 3 || (name[:2] != "r-" && name[:2] != "s-") {
		return 0, false
	}
	pid, err := strconv.Atoi(name[2:])
	return pid, err == nil && pid > 0
}

// alive reports whether pid runs; a zombie (killed, not yet reaped) does not.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && err != syscall.EPERM {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// abortFUSE aborts the FUSE connection behind mount point m, if it is
// one, through the fusectl file system: processes still waiting on a
// server that died get an error instead of hanging.
func abortFUSE(m string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || unescapeMount(fields[4]) != m {
			continue
		}
		_, minor, ok := strings.Cut(fields[2], ":")
		n, err := strconv.ParseUint(minor, 10, 32)
		if ok && err == nil && strings.Contains(sc.Text(), " - fuse") {
			fusefs.AbortConnection(uint32(n))
		}
		return
	}
}

// mountsUnder lists mount points at or below dir.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
