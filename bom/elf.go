package bom

import (
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"strings"
)

// mayBeELF limits the files opened to look for the ELF magic: the loader
// only maps executables and shared objects, which have an execute bit or
// ".so" in their name (Python extension modules are "*.so").
func mayBeELF(host string, mode fs.FileMode) bool {
	return mode&0o111 != 0 || strings.Contains(path.Base(host), ".so")
}

// queueIfELF queues host, found at image path ip, for dependency
// resolution if it is an ELF file.
func (p *planner) queueIfELF(host, ip, origin string) {
	key := host + "\x00" + ip
	if p.elfSeen[key] {
		return
	}
	f, err := os.Open(host)
	if err != nil {
		return // reported when the file is read
	}
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	f.Close()
	if err != nil || string(magic[:]) != elf.ELFMAG {
		return
	}
	p.elfSeen[key] = true
	p.elfQueue = append(p.elfQueue, elfJob{host: host, ip: ip, origin: origin})
	p.elfJobs = append(p.elfJobs, elfJob{host: host, ip: ip, origin: origin})
	p.depsOf(host, true)
}

// parsedELF is readELFDeps' answer for one host file, ready once done is
// closed.
type parsedELF struct {
	done chan struct{}
	d    *elfDeps
	err  error
}

// depsOf returns readELFDeps(host), parsing each file once. With ahead it
// only starts the parse on another goroutine (at most GOMAXPROCS at once)
// and returns nil, nil: the queue's files are parsed on every processor
// while the planner resolves the ones before them, in order.
func (p *planner) depsOf(host string, ahead bool) (*elfDeps, error) {
	pe, ok := p.parsed[host]
	if !ok {
		pe = &parsedELF{done: make(chan struct{})}
		p.parsed[host] = pe
		if p.parsing == nil {
			p.parsing = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)))
		}
		go func() {
			p.parsing <- struct{}{}
			pe.d, pe.err = readELFDeps(host)
			<-p.parsing
			close(pe.done)
		}()
	}
	if ahead {
		return nil, nil
	}
	<-pe.done
	return pe.d, pe.err
}

// elfDeps lists what the loader needs to run the ELF file at host.
type elfDeps struct {
	class   elf.Class
	machine elf.Machine
	interp  string
	needed  []string
	rpath   []string
	runpath []string
	soname  string
}

func readELFDeps(host string) (*elfDeps, error) {
	f, err := elf.Open(host)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := &elfDeps{class: f.Class, machine: f.Machine}
	for _, pr := range f.Progs {
		if pr.Type == elf.PT_INTERP {
			b, err := io.ReadAll(io.LimitReader(pr.Open(), 4096))
			if err != nil {
				return nil, err
			}
			d.interp = strings.TrimRight(string(b), "\x00")
		}
	}
	if f.Section(".dynamic") == nil && dynProg(f) == nil {
		return d, nil // static
	}
	if d.needed, err = f.ImportedLibraries(); err != nil {
		return nil, err
	}
	origin := path.Dir(host)
	expand := func(list []string) []string {
		var out []string
		for _, s := range list {
			for _, dir := range strings.Split(s, ":") {
				if dir = expandDST(dir, origin, f.Class, f.Machine); dir != "" {
					out = append(out, dir)
				}
			}
		}
		return out
	}
	rp, _ := f.DynString(elf.DT_RPATH)
	run, _ := f.DynString(elf.DT_RUNPATH)
	d.rpath, d.runpath = expand(rp), expand(run)
	if sn, _ := f.DynString(elf.DT_SONAME); len(sn) > 0 {
		d.soname = sn[0]
	}
	return d, nil
}

// expandDST replaces the loader's dynamic string tokens in a DT_RPATH or
// DT_RUNPATH entry: $ORIGIN (the directory of the object, as found),
// $LIB and $PLATFORM (as Debian's loader expands them for the object's
// machine), each also written ${NAME}. An entry with any other "$" is
// returned as "" and not searched.
func expandDST(dir, origin string, class elf.Class, machine elf.Machine) string {
	if dir == "" {
		return ""
	}
	lib, platform := dstLib(class, machine), dstPlatform(machine)
	var b strings.Builder
	for i := 0; i < len(dir); i++ {
		if dir[i] != '$' {
			b.WriteByte(dir[i])
			continue
		}
		rest := dir[i+1:]
		var name string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				return ""
			}
			name, i = rest[1:end], i+1+end
		default:
			n := 0
			for n < len(rest) && (rest[n] == '_' || rest[n] >= 'A' && rest[n] <= 'Z' || rest[n] >= 'a' && rest[n] <= 'z' || rest[n] >= '0' && rest[n] <= '9') {
				n++
			}
			name, i = rest[:n], i+n
		}
		var val string
		switch name {
		case "ORIGIN":
			val = origin
		case "LIB":
			val = lib
		case "PLATFORM":
			val = platform
		}
		if val == "" {
			return ""
		}
		b.WriteString(val)
	}
	return path.Clean(b.String())
}

// dstLib is what Debian's loader substitutes for $LIB: its multiarch
// library directory.
func dstLib(class elf.Class, machine elf.Machine) string {
	switch machine {
	case elf.EM_X86_64:
		return "lib/x86_64-linux-gnu"
	case elf.EM_AARCH64:
		return "lib/aarch64-linux-gnu"
	case elf.EM_386:
		return "lib/i386-linux-gnu"
	}
	if class == elf.ELFCLASS64 {
		return "lib64"
	}
	return "lib"
}

// dstPlatform is the loader's $PLATFORM (the kernel's AT_PLATFORM) for
// machine, "" when unknown.
func dstPlatform(machine elf.Machine) string {
	switch machine {
	case elf.EM_X86_64:
		return "x86_64"
	case elf.EM_AARCH64:
		return "aarch64"
	}
	return ""
}

func dynProg(f *elf.File) *elf.Prog {
	for _, pr := range f.Progs {
		if pr.Type == elf.PT_DYNAMIC {
			return pr
		}
	}
	return nil
}

// defaultLibDirs are the loader's built-in directories (Debian multiarch
// first).
func defaultLibDirs(class elf.Class, machine elf.Machine) []string {
	var dirs []string
	switch machine {
	case elf.EM_X86_64:
		dirs = append(dirs, "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
	case elf.EM_AARCH64:
		dirs = append(dirs, "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
	}
	if class == elf.ELFCLASS64 {
		dirs = append(dirs, "/lib64", "/usr/lib64")
	}
	return append(dirs, "/lib", "/usr/lib")
}

func (p *planner) cacheEntries() []LDCacheEntry {
	if !p.ldLoaded {
		p.ldLoaded = true
		if data, err := os.ReadFile(p.opts.LDCache); err == nil {
			p.ldcache, _ = ParseLDCache(data)
		}
	}
	return p.ldcache
}

type elfKind struct {
	ok      bool
	class   elf.Class
	machine elf.Machine
}

// matches reports whether host is an ELF object for class and machine.
func (p *planner) matches(host string, class elf.Class, machine elf.Machine) bool {
	k, seen := p.elfKinds[host]
	if !seen {
		if f, err := elf.Open(host); err == nil {
			k = elfKind{ok: true, class: f.Class, machine: f.Machine}
			f.Close()
		}
		p.elfKinds[host] = k
	}
	return k.ok && k.class == class && k.machine == machine
}

// findLib finds a DT_NEEDED library the way the loader does. viaCache
// reports a library found only through ld.so.cache in a directory the
// loader does not search by default.
func (p *planner) findLib(name string, d *elfDeps) (lib string, viaCache, ok bool) {
	if strings.Contains(name, "/") {
		return name, false, p.matches(name, d.class, d.machine)
	}
	var cands []string
	if len(d.runpath) == 0 {
		for _, dir := range d.rpath {
			cands = append(cands, path.Join(dir, name))
		}
	}
	for _, dir := range d.runpath {
		cands = append(cands, path.Join(dir, name))
	}
	nSearch := len(cands)
	for _, e := range p.cacheEntries() {
		if e.Name == name {
			cands = append(cands, e.Path)
		}
	}
	nCache := len(cands)
	defaults := defaultLibDirs(d.class, d.machine)
	for _, dir := range defaults {
		cands = append(cands, path.Join(dir, name))
	}
	for i, c := range cands {
		if p.matches(c, d.class, d.machine) {
			inDefault := false
			for _, dir := range defaults {
				inDefault = inDefault || path.Dir(c) == dir
			}
			return c, i >= nSearch && i < nCache && !inDefault, true
		}
	}
	return "", false, false
}

func (p *planner) resolveELF(j elfJob) error {
	d, err := p.depsOf(j.host, false)
	if err != nil {
		return nil // not an ELF object the loader would load either
	}
	var loads []string
	if d.interp != "" {
		if _, _, err := p.addHostPath(d.interp, "ELF interpreter of "+j.host); err != nil {
			return err
		}
		loads = append(loads, d.interp)
	}
	for _, name := range d.needed {
		lib, viaCache, ok := p.findLib(name, d)
		if !ok {
			// The loader also satisfies a dependency with an object of
			// that soname already loaded: the JVM's launcher loads
			// lib/server/libjvm.so by path before the libraries that
			// need "libjvm.so" with only $ORIGIN (lib/) to search.
			ip, found := p.shippedSoname(name, j.host, d)
			if !found {
				return fmt.Errorf("%s (needed by %s, %s): %w in its RPATH/RUNPATH, ld.so.cache, the default directories or among the image's own libraries", name, j.host, j.origin, ErrUnresolved)
			}
			loads = append(loads, ip)
			continue
		}
		if ip, ok := p.renamedPath(lib); ok {
			// Planned, and queued, by the copy of its directory.
			loads = append(loads, ip)
			continue
		}
		p.needCache = p.needCache || viaCache
		if _, _, err := p.addHostPath(lib, "ELF dependency of "+j.host); err != nil {
			return err
		}
		// The loader sets $ORIGIN from the path it found the library
		// by, symbolic links unresolved: keep that path.
		p.queueIfELF(lib, lib, "ELF dependency of "+j.host)
		loads = append(loads, lib)
	}
	if len(loads) > 0 {
		p.direct[j.ip] = loads
	}
	return nil
}

// closures returns, for every ELF file whose dependencies were resolved,
// every path the loader opens to run it: its interpreter and libraries,
// then theirs, breadth first, each once.
func (p *planner) closures() map[string][]string {
	if len(p.direct) == 0 {
		return nil
	}
	out := make(map[string][]string, len(p.direct))
	for ip := range p.direct {
		seen := map[string]bool{ip: true}
		var list []string
		for queue := []string{ip}; len(queue) > 0; queue = queue[1:] {
			for _, dep := range p.direct[queue[0]] {
				if !seen[dep] {
					seen[dep] = true
					list = append(list, dep)
					queue = append(queue, dep)
				}
			}
		}
		out[ip] = list
	}
	return out
}

// shippedSoname finds, among the ELF objects the image already holds
// (copied by the BOM or resolved), one whose DT_SONAME is name and whose
// class and machine match d: the object a program loads by path before
// the library that needs it by name. Of several, the one nearest to
// needer (longest common directory) wins; ties go to the smaller path.
// It returns that object's image path.
func (p *planner) shippedSoname(name, needer string, d *elfDeps) (string, bool) {
	best, bestScore := "", -1
	for _, j := range p.elfJobs {
		if !p.matches(j.host, d.class, d.machine) || p.soname(j.host) != name {
			continue
		}
		score := commonDirs(path.Dir(needer), path.Dir(j.host))
		if score > bestScore || score == bestScore && j.ip < best {
			best, bestScore = j.ip, score
		}
	}
	return best, bestScore >= 0
}

func (p *planner) soname(host string) string {
	if s, ok := p.sonames[host]; ok {
		return s
	}
	var s string
	if d, err := p.depsOf(host, false); err == nil {
		s = d.soname
	}
	p.sonames[host] = s
	return s
}

// commonDirs counts the leading path components a and b share.
func commonDirs(a, b string) int {
	as, bs := splitPath(a), splitPath(b)
	n := 0
	for n < len(as) && n < len(bs) && as[n] == bs[n] {
		n++
	}
	return n
}
