// Package freeport finds TCP ports that a server started a moment later
// (often in another process) can bind.
//
// A port taken from listening on ":0" comes from the kernel's ephemeral
// range, the same range every outgoing connection takes its local port
// from; between releasing it and the server binding it, any connection of
// any process may take it ("bind: address already in use"). The ports
// here come from below that range instead, at random, and each is
// reserved for the life of the process with a lock file, so that two
// processes choosing at once (test packages run in parallel) do not pick
// the same one.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// tries bounds the random probes for one port or run.
const tries = 500

var (
	mu   sync.Mutex
	held = map[int]*os.File{} // ports this process reserved, with their locks (nil: no lock directory)
)

// Ports returns n distinct ports of host that were free just now.
func Ports(host string, n int) ([]int, error) {
	mu.Lock()
	defer mu.Unlock()
	lo, hi := window()
	out := make([]int, 0, n)
	for range n {
		p, err := reserveRun(host, 1, lo, hi)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Addrs is Ports as host:port addresses.
func Addrs(host string, n int) ([]string, error) {
	ps, err := Ports(host, n)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = net.JoinHostPort(host, strconv.Itoa(p))
	}
	return out, nil
}

// Run returns p such that p, p+1, ..., p+n-1 of host were all free just
// now (a worker's data-plane ports, one per slot).
func Run(host string, n int) (int, error) {
	if n < 1 {
		return 0, fmt.Errorf("freeport: a run of %d ports", n)
	}
	mu.Lock()
	defer mu.Unlock()
	lo, hi := window()
	return reserveRun(host, n, lo, hi)
}

func reserveRun(host string, n, lo, hi int) (int, error) {
	if hi-lo < n {
		return 0, fmt.Errorf("freeport: no room for %d ports in %d-%d", n, lo, hi-1)
	}
	for range tries {
		p := lo + rand.IntN(hi-lo-n+1)
		if reserve(host, p, n) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("freeport: no %d consecutive free ports on %s in %d-%d after %d tries", n, host, lo, hi-1, tries)
}

// reserve locks p..p+n-1 and checks that each can be bound, or leaves
// none of them reserved.
func reserve(host string, p, n int) bool {
	var got []int
	ok := true
	for k := 0; ok && k < n; k++ {
		q := p + k
		if _, mine := held[q]; mine {
			ok = false
			break
		}
		f, free := lock(q)
		if !free {
			ok = false
			break
		}
		held[q] = f
		got = append(got, q)
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(q)))
		if err != nil {
			ok = false
			break
		}
		l.Close()
	}
	if ok {
		return true
	}
	for _, q := range got {
		if f := held[q]; f != nil {
			f.Close() // releases the lock
		}
		delete(held, q)
	}
	return false
}

// lock takes an exclusive lock on the port's file in the shared lock
// directory; without a usable directory every port counts as unlocked.
func lock(p int) (*os.File, bool) {
	path := lockPath(p)
	if err := os.MkdirAll(filepath.Dir(path), 0o777); err != nil {
		return nil, true
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, !errors.Is(err, syscall.EWOULDBLOCK)
	}
	return f, true
}

func lockPath(p int) string {
	return filepath.Join(os.TempDir(), "switchyard-ports", strconv.Itoa(p))
}

// window is [lo, hi): the 16384 ports below the ephemeral range (Linux's
// ip_local_port_range; 32768 when it cannot be read), not below 1024.
func window() (lo, hi int) {
	hi = 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 1024 {
				hi = v
			}
		}
	}
	lo = max(1024, hi-16384)
	return lo, hi
}
