package migrate

import (
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/gramine/pf"
)

// Why the Gramine manifest fields veil does not map are left out.
var gramineReasons = map[string]string{
	"loader.entrypoint":                            "Gramine's LibOS binary: veil runs the program directly",
	"loader.log_level":                             "Gramine's log level: veil's runtime logs to the host and never logs workload data",
	"loader.log_file":                              "Gramine's log file: veil's runtime logs to the host",
	"loader.argv":                                  "fixed argv: veil runs the program named on the veil run command line; set args.passthrough to pass arguments",
	"loader.argv_src_file":                         "argv from a file: veil runs the program named on the veil run command line",
	"loader.env_src_file":                          "environment from a file: list the variables in env.default or env.passthrough",
	"loader.insecure__use_host_env":                "the whole host environment: veil passes through only the variables named in env.passthrough",
	"loader.insecure__disable_aslr":                "ASLR is the kernel's in veil's sandbox",
	"loader.uid":                                   "veil runs the workload as an unprivileged user in its own user namespace",
	"loader.gid":                                   "veil runs the workload as an unprivileged user in its own user namespace",
	"loader.pal_internal_mem_size":                 "Gramine's internal memory: veil runs no LibOS",
	"loader.preload":                               "Gramine LibOS preloads: veil runs no LibOS",
	"libos.check_invalid_pointers":                 "Gramine LibOS checks: veil runs no LibOS",
	"fs.root":                                      "veil's root file system is the trusted image built from image/ and the bom section",
	"fs.start_dir":                                 "start directory: veil run starts the program in the image's root",
	"fs.insecure__keys":                            "a key written in the manifest is insecure: put the 16 bytes in the key file the sealed mount names (development only)",
	"sgx.remote_attestation":                       "veil attests with its own backends (sim, SGX quotes, TDX, SEV-SNP) to the key services of the kms section",
	"sgx.ra_client_spid":                           "EPID attestation is not supported (DCAP only)",
	"sgx.ra_client_linkable":                       "EPID attestation is not supported (DCAP only)",
	"sgx.file_check_policy":                        "veil never opens unlisted files: the image holds what bom lists, hostfs mounts are explicit",
	"sgx.edmm_enable":                              "SGX EDMM: no veil equivalent",
	"sgx.preheat_enclave":                          "SGX enclave pre-faulting: no veil equivalent",
	"sgx.nonpie_binary":                            "SGX enclave layout: no veil equivalent",
	"sgx.enable_stats":                             "SGX statistics: no veil equivalent",
	"sgx.profile":                                  "SGX profiling: no veil equivalent",
	"sgx.vtune_profile":                            "SGX profiling: no veil equivalent",
	"sgx.cpu_features":                             "SGX enclave CPU attributes: in a confidential VM the CPU's features are available as on the host",
	"sgx.seal_key":                                 "SGX sealing-key masks: veil seals with keys from its key service, not the CPU",
	"sgx.use_exinfo":                               "SGX exception information: no veil equivalent",
	"sgx.insecure__rpc_thread_num":                 "Gramine's exitless calls: no veil equivalent",
	"sgx.insecure__allow_memfaults_without_exinfo": "SGX exception handling: no veil equivalent",
	"sgx.require_avx":                              "SGX enclave CPU attributes: no veil equivalent",
	"sgx.require_avx512":                           "SGX enclave CPU attributes: no veil equivalent",
	"sgx.require_amx":                              "SGX enclave CPU attributes: no veil equivalent",
	"sgx.require_mpx":                              "SGX enclave CPU attributes: no veil equivalent",
	"sgx.require_pkru":                             "SGX enclave CPU attributes: no veil equivalent",
	"sys.stack.size":                               "per-thread stack size: set ulimit -s in the workload",
	"sys.brk.max_size":                             "per-process heap size: veil limits the instance's memory (resources.memory)",
	"sys.enable_sigterm_injection":                 "veil stop delivers SIGTERM to the workload",
	"sys.enable_extra_runtime_domain_names_conf":   "name resolution files: put /etc files in the image",
	"sys.insecure__allow_eventfd":                  "eventfd is available in veil's sandbox",
	"sys.allowed_ioctls":                           "ioctls: veil's seccomp filter decides, not the configuration",
	"sys.ioctl_structs":                            "ioctls: veil's seccomp filter decides, not the configuration",
	"sys.fds.limit":                                "open file limit: set ulimit -n in the workload",
	"sys.disallow_subprocesses":                    "subprocesses: limit them with resources.max_processes",
	"sys.experimental__enable_flock":               "flock is available in veil's sandbox",
	"sys.debug__mock_syscalls":                     "mocked system calls: no veil equivalent",
	"libos.entrypoint":                             "",
}

// FromGramine imports a rendered Gramine manifest (TOML).
func FromGramine(data []byte, opts Options) (*Result, error) {
	if strings.Contains(string(data), "{{") {
		return nil, fmt.Errorf("%w: the manifest still holds Jinja templates ({{ ... }}); render it with gramine-manifest first", ErrInput)
	}
	var in map[string]any
	if _, err := toml.Decode(string(data), &in); err != nil {
		return nil, fmt.Errorf("%w: the manifest is not valid TOML: %v", ErrInput, err)
	}
	w := newWalker()
	c := &config.Config{Env: config.Env{Default: map[string]string{}}}

	if ep, ok := lookup(in, "libos.entrypoint").(string); ok {
		if strings.HasPrefix(ep, "/") {
			c.Entrypoints = []string{path.Clean(ep)}
			w.mapTo("libos.entrypoint", "entrypoints: "+path.Clean(ep)+" (this one program)")
		} else {
			w.skip("libos.entrypoint", "not an absolute path")
		}
	}
	if v, ok := lookup(in, "loader.insecure__use_cmdline_argv").(bool); ok {
		c.Args.Passthrough = v
		w.mapTo("loader.insecure__use_cmdline_argv", fmt.Sprintf("args.passthrough = %v (the host's arguments, untrusted)", v))
	}

	// loader.env.NAME = "v" | {value = "v"} | {passthrough = true}
	if env, ok := lookup(in, "loader.env").(map[string]any); ok {
		for _, k := range sortedKeys(env) {
			f := "loader.env." + k
			switch v := env[k].(type) {
			case string:
				c.Env.Default[k] = v
				w.mapTo(f, "env.default."+k)
			case map[string]any:
				if s, ok := v["value"].(string); ok && len(v) == 1 {
					c.Env.Default[k] = s
					w.mapTo(f, "env.default."+k)
				} else if p, ok := v["passthrough"].(bool); ok && p && len(v) == 1 {
					c.Env.Passthrough = append(c.Env.Passthrough, k)
					w.mapTo(f, "env.passthrough (the host's value, untrusted)")
				} else {
					w.skip(f, "neither {value = ...} nor {passthrough = true}")
				}
			default:
				w.skip(f, "not a string or table")
			}
		}
	}

	// Mounts: remember host -> enclave paths for trusted and allowed files.
	type chroot struct{ host, enclave string }
	var chroots []chroot
	// The root: the directory Gramine was started in, unless fs.root says.
	rootHost := opts.BaseDir
	if u, ok := lookup(in, "fs.root.uri").(string); ok {
		if h, isFile := strings.CutPrefix(u, "file:"); isFile {
			rootHost = hostPath(opts.BaseDir, h)
			w.mapTo("fs.root.uri", "used to place host files (the root itself is veil's image)")
		}
	}
	if rootHost != "" {
		chroots = append(chroots, chroot{rootHost, "/"})
	}
	libos, _ := lookup(in, "loader.entrypoint.uri").(string)
	if ms := tableList(lookup(in, "fs.mounts")); ms != nil {
		for i, m := range ms {
			f := fmt.Sprintf("fs.mounts[%d]", i)
			typ, _ := m["type"].(string)
			if typ == "" {
				typ = "chroot"
			}
			p, _ := m["path"].(string)
			uri, _ := m["uri"].(string)
			if !validTarget(p) {
				w.skip(f, fmt.Sprintf("path %q is not an absolute, clean path other than /", p))
				continue
			}
			hostURI, isFile := strings.CutPrefix(uri, "file:")
			switch typ {
			case "chroot":
				if !isFile {
					w.skip(f, fmt.Sprintf("uri %q is not a file: URI", uri))
					continue
				}
				chroots = append(chroots, chroot{hostPath(opts.BaseDir, hostURI), p})
				w.mapTo(f, "the host files under it listed in sgx.trusted_files go into the image (bom.copy), those in sgx.allowed_files become hostfs mounts")
			case "tmpfs":
				if addMount(c, config.Mount{Target: p, Type: config.MountTmpFS}) {
					w.mapTo(f, "mounts: tmpfs at "+p)
				} else {
					w.skip(f, "target already mounted")
				}
			case "encrypted":
				if !isFile {
					w.skip(f, fmt.Sprintf("uri %q is not a file: URI", uri))
					continue
				}
				name, _ := m["key_name"].(string)
				if name == "" {
					name = "default"
				}
				key := opts.GramineKeys[name]
				if key == "" {
					key = "file:keys/" + strings.TrimLeft(name, "_") + ".key"
				}
				mt := config.Mount{Target: p, Type: config.MountSealed, Source: hostPath(opts.BaseDir, hostURI), Key: key, Format: config.FormatGraminePF, PFPath: pf.NormPath(hostURI)}
				if !addMount(c, mt) {
					w.skip(f, "target already mounted")
					continue
				}
				w.mapTo(f, fmt.Sprintf("mounts: sealed at %s, format gramine-pf, files bound under %q, key %s (Gramine key %q: its 16-byte wrap key goes there)", p, mt.PFPath, key, name))
				if strings.HasPrefix(name, "_sgx_") {
					w.unmapped = append(w.unmapped, Note{f + ".key_name", fmt.Sprintf("%q is a key only that SGX enclave on that machine can derive: veil cannot open those files; re-encrypt them under a wrap key (gramine-sgx-pf-crypt or veil encrypt --format gramine-pf)", name)})
				}
				if _, ok := m["enable_recovery"]; ok {
					w.unmapped = append(w.unmapped, Note{f + ".enable_recovery", "Gramine's recovery files are not supported: veil refuses a file left with a pending write"})
				}
			default:
				w.skip(f, fmt.Sprintf("mount type %q has no veil equivalent (veil mounts sealed, hostfs and tmpfs)", typ))
			}
		}
	}
	// enclavePath maps a host path to the path the workload sees it at.
	enclavePath := func(host string) string {
		best := -1
		out := host
		for _, ch := range chroots {
			if (host == ch.host || strings.HasPrefix(host, strings.TrimSuffix(ch.host, "/")+"/")) && len(ch.host) > best {
				best = len(ch.host)
				out = path.Join(ch.enclave, strings.TrimPrefix(host, ch.host))
			}
		}
		return out
	}

	// Trusted files go into the image.
	if tf, ok := lookup(in, "sgx.trusted_files").([]any); ok {
		for i, e := range tf {
			gramineTrusted(w, c, fmt.Sprintf("sgx.trusted_files[%d]", i), e, opts, enclavePath, libos)
		}
	} else if tf, ok := lookup(in, "sgx.trusted_files").([]map[string]any); ok {
		for i, e := range tf {
			gramineTrusted(w, c, fmt.Sprintf("sgx.trusted_files[%d]", i), e, opts, enclavePath, libos)
		}
	}
	// Allowed directories become hostfs mounts.
	if af, ok := lookup(in, "sgx.allowed_files").([]any); ok {
		for i, e := range af {
			f := fmt.Sprintf("sgx.allowed_files[%d]", i)
			s, _ := e.(string)
			h, isFile := strings.CutPrefix(s, "file:")
			switch {
			case !isFile:
				w.skip(f, fmt.Sprintf("%q: only file: URIs map (devices are the sandbox's)", s))
			case !strings.HasSuffix(h, "/"):
				w.skip(f, fmt.Sprintf("%q is a single file: veil's hostfs mounts are directories; mount its directory as hostfs if the workload may see all of it, or copy the file into the image", s))
			default:
				host := hostPath(opts.BaseDir, h)
				target := enclavePath(host)
				if !validTarget(target) || !addMount(c, config.Mount{Target: target, Type: config.MountHostFS, Source: host}) {
					w.skip(f, fmt.Sprintf("no place for a hostfs mount at %q", target))
					continue
				}
				w.mapTo(f, "mounts: hostfs at "+target+" (untrusted, as allowed files are)")
			}
		}
	}

	for k, to := range map[string]string{"sgx.isvprodid": "metadata.product_id", "sgx.isvsvn": "metadata.svn"} {
		v, ok := lookup(in, k).(int64)
		if !ok {
			if lookup(in, k) != nil {
				w.skip(k, "not an integer")
			}
			continue
		}
		if v < 0 || v > 65535 {
			w.skip(k, "not an integer from 0 to 65535")
			continue
		}
		if k == "sgx.isvprodid" {
			c.Metadata.ProductID = uint16(v)
		} else {
			c.Metadata.SVN = uint16(v)
		}
		w.mapTo(k, to)
	}
	if d, ok := lookup(in, "sgx.debug").(bool); ok {
		c.Metadata.Debuggable = d
		w.mapTo("sgx.debug", "metadata.debuggable")
	}
	if s, ok := lookup(in, "sgx.enclave_size").(string); ok {
		size := strings.TrimSuffix(strings.ToUpper(s), "B")
		if _, err := config.ParseSize(size); err == nil {
			c.Resources.Memory = size
			w.mapTo("sgx.enclave_size", "resources.memory = "+size+" (the enclave held code and data; veil limits the instance's memory)")
		} else {
			w.skip("sgx.enclave_size", fmt.Sprintf("size %q not understood", s))
		}
	}
	for _, k := range []string{"sgx.max_threads", "sgx.thread_num"} {
		if v, ok := lookup(in, k).(int64); ok && v >= 0 && v <= 1<<22 && c.Resources.MaxProcesses == 0 {
			c.Resources.MaxProcesses = int(v)
			w.mapTo(k, "resources.max_processes (veil counts processes and threads together)")
		}
	}

	w.rest(in, "", reasonFor(gramineReasons))
	if len(c.Entrypoints) == 0 {
		c.Entrypoints = []string{"/usr/bin/"}
		w.unmapped = append(w.unmapped, Note{"libos.entrypoint", "none given: veil requires an entry point, /usr/bin/ was set (review it)"})
	}
	return w.finish(c)
}

func gramineTrusted(w *walker, c *config.Config, f string, e any, opts Options, enclavePath func(string) string, libos string) {
	var uri, sum string
	switch t := e.(type) {
	case string:
		uri = t
	case map[string]any:
		uri, _ = t["uri"].(string)
		sum, _ = t["sha256"].(string)
	}
	h, isFile := strings.CutPrefix(uri, "file:")
	if !isFile || h == "" {
		w.skip(f, fmt.Sprintf("%q is not a file: URI", uri))
		return
	}
	if uri == libos {
		w.skip(f, "Gramine's LibOS (loader.entrypoint): veil runs the program directly")
		return
	}
	if strings.Contains(h, "/gramine/runtime/") {
		w.skip(f, "Gramine's runtime C library: veil copies the program's own libraries (bom.resolve_elf)")
		return
	}
	host := hostPath(opts.BaseDir, h)
	to := enclavePath(host)
	cp := config.Copy{From: host}
	if to != host {
		cp.To = to
	}
	if strings.HasSuffix(h, "/") {
		if sum != "" {
			w.skip(f, "a directory with a hash")
			return
		}
	} else {
		cp.SHA256 = sum
	}
	c.BOM.Copy = append(c.BOM.Copy, cp)
	w.mapTo(f, "bom.copy: "+host+" -> "+to+" (in the image, covered by its hash tree)")
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// tableList returns an array of tables, written either as [[x]] sections or
// as an inline array.
func tableList(v any) []map[string]any {
	switch t := v.(type) {
	case []map[string]any:
		return t
	case []any:
		out := make([]map[string]any, 0, len(t))
		for _, e := range t {
			m, ok := e.(map[string]any)
			if !ok {
				return nil
			}
			out = append(out, m)
		}
		return out
	}
	return nil
}
