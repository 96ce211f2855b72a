package fusefs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/veil-tee/veil/seal"
)

// TestSealedMountsShareADirectory mounts one directory three times with
// the same target, as hosts of a Spark cluster do with shared storage, and
// commits output the way Hadoop's FileOutputCommitter (algorithm 1) does:
// two "executors" write part files concurrently under their own attempt
// directories and rename each attempt directory to its task directory
// (re-binding every file in it); the "driver", through the third mount,
// lists the task directories, renames every file into the output
// directory and removes _temporary. Every mount then reads every part
// file with the content its writer gave it.
func TestSealedMountsShareADirectory(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	opts := SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}}
	a, b, driver := mountSealed(t, src, opts), mountSealed(t, src, opts), mountSealed(t, src, opts)
	job := "out/_temporary/0"
	if err := os.MkdirAll(filepath.Join(driver.dir, job, "_temporary"), 0o755); err != nil {
		t.Fatal(err)
	}

	const tasks, filesPerTask = 6, 3
	want := map[string][]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, tasks)
	for task := range tasks {
		m := a
		if task%2 == 1 {
			m = b
		}
		wg.Go(func() {
			attempt := filepath.Join(m.dir, job, "_temporary", fmt.Sprintf("attempt_%d_0", task))
			if err := os.MkdirAll(attempt, 0o755); err != nil {
				errs <- err
				return
			}
			for f := range filesPerTask {
				name := fmt.Sprintf("part-%05d-%d.csv", task, f)
				data := append([]byte(fmt.Sprintf("task %d file %d\n", task, f)), rnd(50_000+task*1000)...)
				if err := os.WriteFile(filepath.Join(attempt, name), data, 0o644); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				want[name] = data
				mu.Unlock()
			}
			if err := os.Rename(attempt, filepath.Join(m.dir, job, fmt.Sprintf("task_%d", task))); err != nil {
				errs <- fmt.Errorf("committing task %d: %w", task, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The driver's job commit, through its own mount.
	taskDirs, err := filepath.Glob(filepath.Join(driver.dir, job, "task_*"))
	if err != nil || len(taskDirs) != tasks {
		t.Fatalf("the driver sees %d task directories (%v), want %d", len(taskDirs), err, tasks)
	}
	for _, d := range taskDirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if err := os.Rename(filepath.Join(d, e.Name()), filepath.Join(driver.dir, "out", e.Name())); err != nil {
				t.Fatalf("moving %s: %v", e.Name(), err)
			}
		}
	}
	if err := os.RemoveAll(filepath.Join(driver.dir, "out", "_temporary")); err != nil {
		t.Fatal(err)
	}

	for _, m := range []*mount{a, b, driver} {
		entries, err := os.ReadDir(filepath.Join(m.dir, "out"))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		if len(names) != len(want) {
			t.Fatalf("%s lists %d files in out/, want %d: %v", m.dir, len(names), len(want), names)
		}
		for _, n := range names {
			got, err := os.ReadFile(filepath.Join(m.dir, "out", n))
			if err != nil {
				t.Fatalf("reading %s through %s: %v\n%s", n, m.dir, err, m.log)
			}
			if !bytes.Equal(got, want[n]) {
				t.Fatalf("%s through %s: content differs", n, m.dir)
			}
		}
	}
	for _, m := range []*mount{a, b, driver} {
		if m.log.String() != "" {
			t.Errorf("mount %s logged:\n%s", m.dir, m.log)
		}
	}
}
