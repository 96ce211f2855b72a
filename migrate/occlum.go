package migrate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/veil-tee/veil/config"
)

// Why the Occlum fields veil does not map are left out.
var occlumReasons = map[string]string{
	"resource_limits.kernel_space_heap_size":     "memory of Occlum's LibOS kernel; veil runs no LibOS kernel inside the TEE",
	"resource_limits.kernel_space_heap_max_size": "memory of Occlum's LibOS kernel (EDMM); veil runs no LibOS kernel inside the TEE",
	"resource_limits.kernel_space_stack_size":    "stack of Occlum's LibOS kernel; veil runs no LibOS kernel inside the TEE",
	"resource_limits.init_num_of_threads":        "SGX EDMM thread pre-allocation; veil does not pre-allocate threads",
	"process":                                    "per-process stack, heap and mmap sizes: veil limits the instance as a whole (resources.memory); set ulimit in the workload for per-process limits",
	"metadata.enable_kss":                        "SGX key separation and sharing: veil's identity is measurement, signer, product id and svn",
	"metadata.family_id":                         "SGX KSS ISVFAMILYID: no veil equivalent",
	"metadata.ext_prod_id":                       "SGX KSS ISVEXTPRODID: no veil equivalent",
	"metadata.disable_log":                       "Occlum's own log switch: veil's runtime logs to the host and never logs workload data",
	"metadata.pkru":                              "SGX enclave feature: no veil equivalent",
	"metadata.amx":                               "SGX enclave feature: no veil equivalent",
	"feature.amx":                                "SGX AMX enclave attribute: in a confidential VM the CPU's AMX is available as on the host",
	"feature.pkru":                               "Occlum's PKU isolation of its LibOS: veil's sandbox isolates with namespaces and seccomp",
	"feature.io_uring":                           "Occlum's I/O path: veil's workload uses the kernel's system calls directly",
	"feature.enable_edmm":                        "SGX EDMM: no veil equivalent (memory is not pre-committed)",
	"feature.enable_posix_shm":                   "POSIX shared memory is available in veil's sandbox without a switch",
	"app":                                        "multi-stage Occlum configuration (init stage): veil has one stage; its runtime does what Occlum's init does (attestation, keys)",
}

// FromOcclum imports an Occlum.json.
func FromOcclum(data []byte, opts Options) (*Result, error) {
	var in map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("%w: Occlum.json is not a JSON object: %v", ErrInput, err)
	}
	sealedKey := opts.SealedKey
	if sealedKey == "" {
		sealedKey = "file:keys/sealed.key"
	}
	w := newWalker()
	c := &config.Config{Env: config.Env{Default: map[string]string{}}}

	// Entry points: path prefixes compared by component in Occlum.
	if eps, ok := in["entry_points"].([]any); ok {
		for i, e := range eps {
			f := fmt.Sprintf("entry_points[%d]", i)
			s, ok := e.(string)
			if !ok || !strings.HasPrefix(s, "/") {
				w.skip(f, "not an absolute path")
				continue
			}
			p := path.Clean(s)
			if p != "/" {
				p += "/"
			}
			c.Entrypoints = append(c.Entrypoints, p)
			w.mapTo(f, "entrypoints: "+p+" (a directory prefix, as Occlum compares paths by component)")
		}
	}

	// Environment: {"default": ["K=V"], "untrusted": ["NAME"]}, or the old
	// form, a list of "K=V".
	addDefault := func(f string, e any) {
		s, ok := e.(string)
		k, v, eq := strings.Cut(s, "=")
		if !ok || !eq || k == "" {
			w.skip(f, "not a NAME=VALUE string")
			return
		}
		c.Env.Default[k] = v
		w.mapTo(f, "env.default."+k)
	}
	switch env := in["env"].(type) {
	case []any:
		for i, e := range env {
			addDefault(fmt.Sprintf("env[%d]", i), e)
		}
	case map[string]any:
		if d, ok := env["default"].([]any); ok {
			for i, e := range d {
				addDefault(fmt.Sprintf("env.default[%d]", i), e)
			}
		}
		if u, ok := env["untrusted"].([]any); ok {
			for i, e := range u {
				f := fmt.Sprintf("env.untrusted[%d]", i)
				s, ok := e.(string)
				switch {
				case !ok || s == "":
					w.skip(f, "not a variable name")
				case c.Env.Default[s] != "" || hasKey(c.Env.Default, s):
					w.skip(f, "also in env.default: veil keeps the trusted value and does not let the host override it")
				default:
					c.Env.Passthrough = append(c.Env.Passthrough, s)
					w.mapTo(f, "env.passthrough (the host's value, untrusted)")
				}
			}
		}
	}

	// Resource limits.
	rl, _ := in["resource_limits"].(map[string]any)
	vm, _ := in["vm"].(map[string]any)
	memField, mem := "", ""
	for _, cand := range []struct {
		m     map[string]any
		at, k string
	}{{rl, "resource_limits", "user_space_max_size"}, {rl, "resource_limits", "user_space_size"}, {vm, "vm", "user_space_size"}} {
		if s, ok := cand.m[cand.k].(string); ok && mem == "" {
			memField, mem = cand.at+"."+cand.k, s
		}
	}
	if mem != "" {
		size := strings.TrimSuffix(strings.ToUpper(strings.ReplaceAll(mem, " ", "")), "B")
		if _, err := config.ParseSize(size); err == nil {
			c.Resources.Memory = size
			w.mapTo(memField, "resources.memory = "+size+" (Occlum's user space for all processes; veil limits the instance's memory)")
		} else {
			w.skip(memField, fmt.Sprintf("size %q not understood", mem))
		}
		for _, other := range []string{"resource_limits.user_space_size", "resource_limits.user_space_max_size", "vm.user_space_size"} {
			if other != memField && lookup(in, other) != nil {
				w.skip(other, "superseded by "+memField+" for resources.memory")
			}
		}
	}
	if n, ok := rl["max_num_of_threads"].(json.Number); ok {
		if v, err := n.Int64(); err == nil && v >= 0 && v <= 1<<22 {
			c.Resources.MaxProcesses = int(v)
			w.mapTo("resource_limits.max_num_of_threads", "resources.max_processes (veil counts processes and threads together)")
		} else {
			w.skip("resource_limits.max_num_of_threads", "not an integer from 0 to 4194304")
		}
	}

	// Metadata.
	md, _ := in["metadata"].(map[string]any)
	for k, to := range map[string]string{"product_id": "metadata.product_id", "version_number": "metadata.svn"} {
		n, ok := md[k].(json.Number)
		if !ok {
			continue
		}
		v, err := n.Int64()
		if err != nil || v < 0 || v > 65535 {
			w.skip("metadata."+k, "not an integer from 0 to 65535")
			continue
		}
		if k == "product_id" {
			c.Metadata.ProductID = uint16(v)
		} else {
			c.Metadata.SVN = uint16(v)
		}
		w.mapTo("metadata."+k, to)
	}
	if d, ok := md["debuggable"].(bool); ok {
		c.Metadata.Debuggable = d
		w.mapTo("metadata.debuggable", "metadata.debuggable")
	}

	// Mounts.
	if ms, ok := in["mount"].([]any); ok {
		for i, m := range ms {
			occlumMount(w, c, fmt.Sprintf("mount[%d]", i), m, opts, sealedKey)
		}
	}

	w.rest(in, "", reasonFor(occlumReasons))
	if len(c.Entrypoints) == 0 {
		c.Entrypoints = []string{"/bin/"}
		w.unmapped = append(w.unmapped, Note{"entry_points", "none given: veil requires one, /bin/ was set (review it)"})
	}
	return w.finish(c)
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// lookup returns the value at a dotted path of maps, or nil.
func lookup(v any, dotted string) any {
	for _, k := range strings.Split(dotted, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func occlumMount(w *walker, c *config.Config, f string, v any, opts Options, sealedKey string) {
	m, ok := v.(map[string]any)
	if !ok {
		w.skip(f, "not an object")
		return
	}
	typ, _ := m["type"].(string)
	target, _ := m["target"].(string)
	source, _ := m["source"].(string)
	opt, _ := m["options"].(map[string]any)
	// Fields of a mount this importer reads; options are reported below.
	use := func(to string) {
		w.mapTo(f+".type", to)
		for _, k := range []string{"target", "source"} {
			if _, ok := m[k]; ok {
				w.mapTo(f+"."+k, "mount "+k+" (see "+f+".type)")
			}
		}
	}
	sefsOptions := func(at string, o map[string]any) {
		for k := range o {
			switch k {
			case "MAC":
				w.skip(at+".MAC", "SEFS image MAC: veil's image is checked against its own hash tree root, which the measurement covers")
			case "integrity_only":
				w.skip(at+".integrity_only", "veil's image is integrity-protected; encrypt it with veil build --image-key if it must be confidential")
			case "autokey_policy", "key", "index":
				w.skip(at+"."+k, "SEFS key selection: veil sealed mounts name their key in mounts[].key (chosen with --sealed-key)")
			case "temporary":
				w.skip(at+".temporary", "temporary SEFS: use a tmpfs mount in veil")
			case "cache_size":
				w.skip(at+".cache_size", "SEFS cache size: veil's sealed mounts use the kernel page cache")
			default:
				w.skip(at+"."+k, "SEFS option with no veil equivalent")
			}
		}
		if len(o) == 0 {
			w.used[at] = true
		}
	}
	if typ != "unionfs" && target != "/" && !validTarget(target) {
		w.skip(f, fmt.Sprintf("target %q is not an absolute, clean path", target))
		return
	}
	switch typ {
	case "unionfs":
		layers, _ := opt["layers"].([]any)
		if target == "/" {
			use("the image: veil's root file system is the trusted image built from image/ and the bom section")
			for j := range layers {
				lf := fmt.Sprintf("%s.options.layers[%d]", f, j)
				l, _ := layers[j].(map[string]any)
				lo, _ := l["options"].(map[string]any)
				if _, sealed := lo["MAC"]; sealed || j == 0 {
					w.mapTo(lf, "the image (lower layer: the files occlum build packed; put them in image/ or the bom section)")
				} else {
					w.skip(lf, "writable upper layer of the root: veil's root is read-only; add sealed or tmpfs mounts for the paths the workload writes")
				}
			}
			return
		}
		// Elsewhere: the upper (last) SEFS layer holds the writable data.
		if len(layers) == 0 {
			w.skip(f, "unionfs without layers")
			return
		}
		upper, _ := layers[len(layers)-1].(map[string]any)
		src, _ := upper["source"].(string)
		if src == "" {
			src = "sefs" + target
		}
		if addMount(c, config.Mount{Target: target, Type: config.MountSealed, Source: hostPath(opts.BaseDir, src), Key: sealedKey}) {
			use("mounts: sealed at " + target + " (the upper layer's directory; SEFS data is not readable by veil: copy it out with Occlum and seal it with veil encrypt)")
		} else {
			w.skip(f, "target already mounted")
		}
		for j := range layers[:len(layers)-1] {
			w.skip(fmt.Sprintf("%s.options.layers[%d]", f, j), "read-only lower layer: veil does not stack file systems; put its files in the image or the sealed directory")
		}
		w.mapTo(fmt.Sprintf("%s.options.layers[%d]", f, len(layers)-1), "the upper layer's directory is the sealed mount's source")
	case "sefs":
		if target == "/" {
			use("the image: veil's root file system is the trusted image")
			sefsOptions(f+".options", opt)
			return
		}
		src := source
		if src == "" {
			src = "sefs" + target
		}
		if addMount(c, config.Mount{Target: target, Type: config.MountSealed, Source: hostPath(opts.BaseDir, src), Key: sealedKey}) {
			use("mounts: sealed at " + target + " with key " + sealedKey + " (SEFS data is not readable by veil: copy it out with Occlum and seal it with veil encrypt)")
		} else {
			w.skip(f, "target already mounted")
		}
		sefsOptions(f+".options", opt)
	case "hostfs":
		if source == "" {
			w.skip(f, "hostfs without a source")
			return
		}
		if addMount(c, config.Mount{Target: target, Type: config.MountHostFS, Source: hostPath(opts.BaseDir, source)}) {
			use("mounts: hostfs at " + target + " (untrusted, as in Occlum)")
		} else {
			w.skip(f, "target already mounted")
		}
	case "ramfs":
		if addMount(c, config.Mount{Target: target, Type: config.MountTmpFS}) {
			use("mounts: tmpfs at " + target)
		} else {
			w.skip(f, "target already mounted")
		}
	case "procfs", "devfs":
		w.skip(f, "veil's sandbox provides /proc and /dev itself")
	default:
		w.skip(f, fmt.Sprintf("file system type %q has no veil equivalent (veil mounts sealed, hostfs and tmpfs)", typ))
	}
}
