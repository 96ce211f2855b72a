package sandbox

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Paths under the sandbox's /proc that stay visible but read-only: the
// kernel-wide settings (sysctl), the magic SysRq trigger, interrupt
// affinities, bus and file-system driver knobs.
var procReadOnly = []string{"sys", "sysrq-trigger", "irq", "bus", "fs"}

// Paths under /proc that are hidden (an empty file or directory in their
// place): kernel memory, the kernel keyrings, and debugging views of the
// scheduler, timers and devices that leak other tenants' activity. Files
// only the host's root may read (kpageflags, pagetypeinfo, vmallocinfo,
// ...) stay: the workload is not the host's root. Each mask is a mount at
// every start, so the list is kept to what the workload could read.
var procMasked = []string{
	"kcore", "keys", "key-users", "timer_list", "timer_stats", "sched_debug",
	"latency_stats", "acpi", "asound", "scsi",
}

// hardenProc makes the procReadOnly paths of the /proc at proc read-only
// and masks the procMasked ones.
func hardenProc(proc string) error {
	// The proc mount's nosuid, nodev and noexec are locked in a user
	// namespace: a read-only remount must repeat them.
	const locked = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	for _, name := range procReadOnly {
		p := filepath.Join(proc, name)
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("protecting /proc/%s: %w", name, err)
		}
		if err := unix.Mount("", p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|locked, ""); err != nil {
			return fmt.Errorf("making /proc/%s read-only: %w", name, err)
		}
	}
	for _, name := range procMasked {
		p := filepath.Join(proc, name)
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if fi.IsDir() {
			err = unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|locked, "size=0,mode=555")
		} else {
			err = unix.Mount("/dev/null", p, "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("masking /proc/%s: %w", name, err)
		}
	}
	return nil
}

// hideSys puts an empty read-only file system over the image's /sys, if
// it has one: the sandbox gets no sysfs, and nothing writable there.
func hideSys(root string) error {
	p := filepath.Join(root, "sys")
	fi, err := os.Lstat(p)
	if err != nil || !fi.IsDir() {
		return nil
	}
	if err := unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0,mode=555"); err != nil {
		return fmt.Errorf("covering /sys: %w", err)
	}
	return nil
}

// loopbackUp brings up "lo", the only interface of a new network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bringing up loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing up loopback: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing up loopback: %w", err)
	}
	return nil
}
