package instance

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"

	"github.com/veil-tee/veil/config"
	"github.com/veil-tee/veil/kms/client"
)

// withKMSAddresses returns cfg with kms[].address replaced where addrs
// names the key service; cfg itself is not changed. The address is not
// measured, so the build's measurement still holds; the pins are.
func withKMSAddresses(cfg *config.Config, addrs map[string]string, info func(string)) (*config.Config, error) {
	if len(addrs) == 0 {
		return cfg, nil
	}
	names := make([]string, 0, len(addrs))
	for n := range addrs {
		names = append(names, n)
	}
	sort.Strings(names)
	c := *cfg
	c.KMS = slices.Clone(cfg.KMS)
	for _, n := range names {
		i := slices.IndexFunc(c.KMS, func(k config.KMS) bool { return k.Name == n })
		if i < 0 {
			declared := make([]string, len(c.KMS))
			for j, k := range c.KMS {
				declared[j] = k.Name
			}
			return nil, fmt.Errorf("%w: an address was given for key service %q; veil.json declares %q", ErrUnknownKMS, n, declared)
		}
		if err := CheckKMSAddress(addrs[n]); err != nil {
			return nil, fmt.Errorf("address of key service %s: %w", n, err)
		}
		if addrs[n] != c.KMS[i].Address && info != nil {
			info(fmt.Sprintf("kms %s at %s (veil.json: %s)", n, addrs[n], c.KMS[i].Address))
		}
		c.KMS[i].Address = addrs[n]
	}
	return &c, nil
}

// CheckKMSAddress checks the form of a key service address: host:port or
// an https URL, or several of them separated by commas (replicas).
func CheckKMSAddress(addr string) error {
	for _, a := range strings.Split(addr, ",") {
		a = strings.TrimSpace(a)
		hostPort, isURL := strings.CutPrefix(a, "https://")
		if isURL {
			hostPort = strings.TrimSuffix(hostPort, "/")
			if !strings.Contains(hostPort, ":") || strings.HasSuffix(hostPort, "]") {
				hostPort += ":443"
			}
		}
		host, port, err := net.SplitHostPort(hostPort)
		if err != nil || host == "" || port == "" || strings.ContainsAny(hostPort, "/?#@ ") {
			return fmt.Errorf("%q is not host:port or https://host[:port]", a)
		}
	}
	return nil
}

// notPinned reports whether a call failed because the service's
// certificate is not the one the entry pins: no retry can change that.
func notPinned(err error) bool {
	var ve *tls.CertificateVerificationError
	return errors.As(err, &ve) || errors.Is(err, client.ErrNotPinned)
}
