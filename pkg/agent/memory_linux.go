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

// processGroup reads the fifth field of /proc/PID/stat (after the command
// name in parentheses, which may itself hold spaces and parentheses).
func processGroup(pid string) (int, bool) {
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(raw[i+1:]) // state ppid pgrp ...
	if len(f) < 3 {
		return 0, false
	}
	g, err := strconv.Atoi(string(f[2]))
	return g, err == nil
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
