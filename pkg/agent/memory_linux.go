package agent

import (
	"bytes"
	"os"
	"strconv"
)

// groupMemory is the resident private memory (RssAnon + RssShmem) of the
// processes in process group pgid, in bytes. Processes that end while it
// reads are passed over.
func groupMemory(pgid int) (int64, error) {
	pids, err := procPIDs()
	if err != nil {
		return 0, err
	}
	var total int64
	for _, pid := range pids {
		name := strconv.Itoa(pid)
		if pid != pgid {
			if g, ok := processGroup(name); !ok || g != pgid {
				continue
			}
		}
		total += privateResident(name)
	}
	return total, nil
}

// processGroup reads a process's group from /proc/PID/stat.
func processGroup(pid string) (int, bool) {
	g, _, ok := groupAndState(pid)
	return g, ok
}

// privateResident is RssAnon + RssShmem of /proc/PID/status, in bytes (0
// for a process gone or a kernel thread).
func privateResident(pid string) int64 {
	raw, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	var kib int64
	for line := range bytes.Lines(raw) {
		for _, key := range [][]byte{[]byte("RssAnon:"), []byte("RssShmem:")} {
			if rest, ok := bytes.CutPrefix(line, key); ok {
				if f := bytes.Fields(rest); len(f) > 0 {
					n, _ := strconv.ParseInt(string(f[0]), 10, 64)
					kib += n
				}
			}
		}
	}
	return kib << 10
}
