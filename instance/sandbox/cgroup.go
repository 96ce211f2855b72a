package sandbox

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// initTasks is added to a process limit for the sandbox's init, a Go
// program whose threads count as tasks in the pids controller.
const initTasks = 32

// cgroup is the set of cgroup directories made for one sandbox.
type cgroup struct{ dirs []string }

// applyLimits puts pid into new cgroups with the limits, on cgroup v2 or
// the v1 memory and pids controllers, whichever the host has. It reports
// which limits were applied and which not, with the reason; it never fails
// the sandbox.
func applyLimits(pid int, l Limits) (cg *cgroup, applied, notApplied []string) {
	cg = &cgroup{}
	name := fmt.Sprintf("veil-%d", pid)
	type limit struct {
		what, controller, v1file, v2file string
		value                            int64
	}
	pids := l.MaxProcs
	if pids > 0 {
		pids += initTasks
	}
	// Each controller is set up on its own goroutine: on cgroup v1 moving
	// a process in waits for an RCU grace period, and two waits overlap.
	lims := []limit{
		{"memory limit", "memory", "memory.limit_in_bytes", "memory.max", l.MemoryBytes},
		{"process limit", "pids", "pids.max", "pids.max", pids},
	}
	results := make([]struct{ dir, applied, notApplied string }, len(lims))
	var wg sync.WaitGroup
	for i, lim := range lims {
		if lim.value <= 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = applyLimit(pid, name, lim.controller, lim.v1file, lim.v2file, lim.value, l.MaxProcs, lim.what)
		}()
	}
	wg.Wait()
	for _, r := range results {
		if r.dir != "" {
			cg.dirs = append(cg.dirs, r.dir)
		}
		if r.applied != "" {
			applied = append(applied, r.applied)
		}
		if r.notApplied != "" {
			notApplied = append(notApplied, r.notApplied)
		}
	}
	return cg, applied, notApplied
}

// applyLimit makes the cgroup of one controller, sets its limit and moves
// pid into it. dir is set once a directory was made (to be removed later).
func applyLimit(pid int, name, controller, v1file, v2file string, value, maxProcs int64, what string) (r struct{ dir, applied, notApplied string }) {
	desc := fmt.Sprintf("%s %d", what, value)
	if controller == "pids" {
		desc = fmt.Sprintf("%s %d (+%d for veil's init)", what, maxProcs, initTasks)
	}
	dir, file, err := cgroupDir(controller, name, v1file, v2file)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		r.dir = dir
		err = os.WriteFile(filepath.Join(dir, file), []byte(strconv.FormatInt(value, 10)), 0o644)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
	}
	if err != nil {
		r.notApplied = fmt.Sprintf("%s: %v", desc, err)
	} else {
		r.applied = desc
	}
	return r
}

// cgroupDir finds where a child cgroup for controller goes: under this
// process's own cgroup, on v1 if the controller is mounted there, else on v2.
func cgroupDir(controller, name, v1file, v2file string) (dir, file string, err error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	var v2path string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2path = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				base := filepath.Join("/sys/fs/cgroup", controller)
				if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err == nil {
					return filepath.Join(base, parts[2], name), v1file, nil
				}
			}
		}
	}
	ctrls, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err == nil && strings.Contains(" "+string(ctrls)+" ", " "+controller+" ") {
		return filepath.Join("/sys/fs/cgroup", v2path, name), v2file, nil
	}
	return "", "", fmt.Errorf("no %s cgroup controller is available to this process", controller)
}

// remove deletes the cgroups once the sandbox's processes are gone.
func (cg *cgroup) remove() {
	if cg == nil {
		return
	}
	for _, d := range cg.dirs {
		os.Remove(d)
	}
}
