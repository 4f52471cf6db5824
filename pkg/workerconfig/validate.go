package workerconfig

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// FieldError is one broken rule, printed as
// `workerconfig: advertise_address = "foo": missing port`.
type FieldError struct {
	Path  string
	Value any
	Rule  string
}

func (e *FieldError) Error() string {
	v := e.Value
	if s, ok := v.(string); ok {
		v = strconv.Quote(s)
	}
	return fmt.Sprintf("workerconfig: %s = %v: %s", e.Path, v, e.Rule)
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

const idRule = "must be 1-128 of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"

// ValidID reports whether id can name a worker.
func ValidID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("worker id %.80q: %s", id, idRule)
	}
	return nil
}

var (
	idRE         = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	rankUserRE   = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10}(:[0-9]{1,10})?)$`)
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9._/-]{0,63}$`)
)

// Lease TTL bounds, seconds.
const (
	MinLeaseTTL = 2
	MaxLeaseTTL = 3600
)

// Validate reports every broken rule, one *FieldError each, joined. It
// checks that the TLS files exist.
func (c Config) Validate() error { return c.validate(true) }

// validate is Validate; statFiles false checks that the TLS files are
// named, not that they exist here (LoadForCheck).
func (c Config) validate(statFiles bool) error {
	var errs []error
	bad := func(path string, v any, rule string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Value: v, Rule: fmt.Sprintf(rule, args...)})
	}

	if !idRE.MatchString(c.ID) {
		bad("id", c.ID, idRule)
	}
	if !idRE.MatchString(c.Host) {
		bad("host", c.Host, idRule)
	}

	if len(c.Coordinators) == 0 {
		bad("coordinators", c.Coordinators, "at least one coordinator address host:port is required")
	}
	for i, a := range c.Coordinators {
		if why := hostPort(a, false); why != "" {
			bad(fmt.Sprintf("coordinators[%d]", i), a, "%s", why)
		}
	}
	if len(c.EtcdEndpoints) == 0 {
		bad("etcd_endpoints", c.EtcdEndpoints, "at least one etcd endpoint is required")
	}
	for i, e := range c.EtcdEndpoints {
		if why := endpoint(e); why != "" {
			bad(fmt.Sprintf("etcd_endpoints[%d]", i), e, "%s", why)
		}
	}
	if c.NATSURL != "" {
		u, err := url.Parse(c.NATSURL)
		switch {
		case err != nil:
			bad("nats_url", c.NATSURL, "not a URL")
		case !slices.Contains([]string{"nats", "tls", "ws", "wss"}, u.Scheme):
			bad("nats_url", c.NATSURL, "scheme must be nats, tls, ws or wss")
		case u.Hostname() == "":
			bad("nats_url", c.NATSURL, "missing host")
		}
	}

	if c.MetricsAddress != "" {
		if why := hostPort(c.MetricsAddress, true); why != "" {
			bad("metrics_address", c.MetricsAddress, "%s", why)
		}
	}
	listenOK := true
	if why := hostPort(c.ListenAddress, true); why != "" {
		bad("listen_address", c.ListenAddress, "%s", why)
		listenOK = false
	}
	advertiseOK := true
	if c.AdvertiseAddress == "" {
		bad("advertise_address", c.AdvertiseAddress, "required when listen_address has no specific host or port")
		advertiseOK = false
	} else if why := hostPort(c.AdvertiseAddress, false); why != "" {
		bad("advertise_address", c.AdvertiseAddress, "%s", why)
		advertiseOK = false
	} else if h, _, _ := net.SplitHostPort(c.AdvertiseAddress); unspecifiedHost(h) {
		bad("advertise_address", c.AdvertiseAddress, "must name a host peers can dial, not an unspecified address")
		advertiseOK = false
	}
	if listenOK {
		lh, _, _ := net.SplitHostPort(c.ListenAddress)
		if !loopback(lh) && !c.TLS.Enabled() && !c.Insecure {
			bad("listen_address", c.ListenAddress, "is not a loopback address: set tls.ca, tls.cert and tls.key, or insecure: true")
		}
		if advertiseOK {
			ah, _, _ := net.SplitHostPort(c.AdvertiseAddress)
			if loopback(lh) && !loopback(ah) {
				bad("advertise_address", c.AdvertiseAddress, "peers could not reach it: listen_address %q accepts loopback connections only", c.ListenAddress)
			}
		}
	}

	r := c.Resources
	if r.CPUCores < 1 {
		bad("resources.cpu_cores", r.CPUCores, "must be >= 1")
	}
	if r.MemoryMiB < 1 {
		bad("resources.memory_mib", r.MemoryMiB, "must be >= 1")
	}
	if r.GPUs < 0 {
		bad("resources.gpus", r.GPUs, "must be >= 0 (or -1 before detection)")
	}
	if ix := r.GPUIndices; len(ix) > 0 {
		seen := map[int]bool{}
		for _, i := range ix {
			if i < 0 || seen[i] {
				bad("resources.gpu_indices", ix, "must be distinct indices >= 0")
				break
			}
			seen[i] = true
		}
		if len(r.GPUDevices) == 0 && len(ix) != r.GPUs {
			bad("resources.gpu_indices", ix, "names %d GPUs, resources.gpus declares %d", len(ix), r.GPUs)
		}
	}
	switch n := c.SlotCount(); {
	case c.Slots < 0 || c.Slots > MaxSlots:
		bad("slots", c.Slots, "must be in [0, %d] (0: one per GPU, or 1 without GPUs)", MaxSlots)
	case r.GPUs > 0 && r.GPUs%n != 0:
		bad("slots", c.Slots, "must divide resources.gpus = %d (each slot gets an equal share of the GPUs)", r.GPUs)
	case r.CPUCores >= 1 && r.CPUCores < n:
		bad("slots", c.Slots, "more slots than resources.cpu_cores = %d (each slot needs a core)", r.CPUCores)
	case listenOK && n > 1:
		if _, p, _ := net.SplitHostPort(c.ListenAddress); p == "0" {
			bad("slots", c.Slots, "several slots need a fixed listen_address port (slot k listens on port + k)")
		} else if port, _ := strconv.Atoi(p); port+n-1 > 65535 {
			bad("slots", c.Slots, "listen_address port %d + %d slots passes 65535", port, n)
		}
	}

	keys := make([]string, 0, len(c.Labels))
	for k := range c.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		switch v := c.Labels[k]; {
		case !labelKeyRE.MatchString(k):
			bad("labels", k, "label keys must be 1-63 of A-Z, a-z, 0-9, '.', '_', '/' and '-', starting with a letter or digit")
		case !labelValueRE.MatchString(v):
			bad("labels."+k, v, "label values must be 0-63 of A-Z, a-z, 0-9, '.', '_', '/' and '-'")
		}
	}

	if c.StoragePath == "" {
		bad("storage_path", c.StoragePath, "required (the directory for checkpoint shards)")
	} else if !filepath.IsAbs(c.StoragePath) {
		bad("storage_path", c.StoragePath, "must be an absolute path")
	}
	for i, p := range c.AllowedPaths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			bad(fmt.Sprintf("allowed_paths[%d]", i), p, "must be a clean absolute path")
		}
	}

	if u := c.RankUser; u != "" && !rankUserRE.MatchString(u) {
		bad("rank_user", u, "want a user name, a uid, or uid:gid")
	}

	if c.DataPlaneTLS && !c.TLS.Enabled() {
		bad("data_plane_tls", c.DataPlaneTLS, "needs tls.ca, tls.cert and tls.key")
	}
	if t := c.TLS; t.Enabled() {
		for _, f := range []struct{ path, file string }{{"tls.ca", t.CA}, {"tls.cert", t.Cert}, {"tls.key", t.Key}} {
			if f.file == "" {
				bad(f.path, f.file, "required with the other TLS files (mutual TLS needs ca, cert and key)")
				continue
			}
			if !statFiles {
				continue
			}
			st, err := os.Stat(f.file)
			switch {
			case errors.Is(err, os.ErrNotExist):
				bad(f.path, f.file, "no such file")
			case err != nil:
				bad(f.path, f.file, "%v", err)
			case !st.Mode().IsRegular():
				bad(f.path, f.file, "not a regular file")
			}
		}
	}

	if c.DrainSeconds < 0 || c.DrainSeconds > 86400 {
		bad("drain_seconds", c.DrainSeconds, "must be in [0, 86400]")
	}
	if c.LeaseTTLSeconds < MinLeaseTTL || c.LeaseTTLSeconds > MaxLeaseTTL {
		bad("lease_ttl_seconds", c.LeaseTTLSeconds, "must be in [%d, %d]", MinLeaseTTL, MaxLeaseTTL)
	}
	return errors.Join(errs...)
}

// hostPort explains what is wrong with a host:port address, or "". An
// empty host and port 0 are allowed only for listening.
func hostPort(a string, listen bool) string {
	if a == "" {
		return "required"
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) && ae.Err == "missing port in address" {
			return "missing port"
		}
		return "not host:port"
	}
	if host == "" && !listen {
		return "missing host"
	}
	n, err := strconv.Atoi(port)
	low := 1
	if listen {
		low = 0
	}
	if err != nil || n < low || n > 65535 {
		return fmt.Sprintf("port must be a number in [%d, 65535]", low)
	}
	if strings.ContainsAny(host, " /") {
		return "bad host"
	}
	return ""
}

// endpoint accepts host:port or http(s)://host:port.
func endpoint(e string) string {
	if !strings.Contains(e, "://") {
		return hostPort(e, false)
	}
	u, err := url.Parse(e)
	switch {
	case err != nil:
		return "not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "scheme must be http or https"
	case u.Host == "":
		return "missing host"
	case u.Port() == "":
		return "missing port"
	}
	return hostPort(u.Host, false)
}

// loopback reports whether a listen host accepts only local connections:
// "localhost" or a loopback IP. Empty and unspecified hosts listen on every
// interface.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
