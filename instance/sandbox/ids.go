package sandbox

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// IDRange is a range of host user and group IDs.
type IDRange struct {
	UID  uint32 `json:"uid"`  // first host uid
	GID  uint32 `json:"gid"`  // first host gid
	Size uint32 `json:"size"` // number of IDs
}

// DefaultIDs returns the host range a sandbox started by root maps its IDs 0 to
// 65535 to when /etc/subuid and /etc/subgid give the user "veil" none: far
// above the ranges useradd hands out (100000 onwards), so no login user
// and no other container runtime's default owns it.
func DefaultIDs() IDRange { return IDRange{UID: 1 << 30, GID: 1 << 30, Size: 65536} }

// subIDUser is the user whose subordinate ID ranges, if any, are used.
const subIDUser = "veil"

// HostIDs returns the host range that a sandbox started by this process
// maps its IDs to, or nil when the process is not root (the caller's own
// IDs are then mapped): what file systems served to the sandbox shift
// their owners by.
func HostIDs() *IDRange {
	if os.Geteuid() != 0 {
		return nil
	}
	return hostIDs()
}

// hostIDs returns the range for a sandbox started by root.
func hostIDs() *IDRange {
	r := DefaultIDs()
	u, us, uok := subID("/etc/subuid")
	g, gs, gok := subID("/etc/subgid")
	if uok && gok && us >= 1 && gs >= 1 {
		r = IDRange{UID: u, GID: g, Size: min(us, gs, 65536)}
	}
	return &r
}

// subID reads the first "veil:START:COUNT" line of an /etc/subuid-style file.
func subID(path string) (start, count uint32, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(parts) != 3 || parts[0] != subIDUser {
			continue
		}
		s, err1 := strconv.ParseUint(parts[1], 10, 32)
		c, err2 := strconv.ParseUint(parts[2], 10, 32)
		if err1 != nil || err2 != nil || s == 0 || s+c > 1<<32-1 {
			return 0, 0, false
		}
		return uint32(s), uint32(c), true
	}
	return 0, 0, false
}
