package agent

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// killOrphans kills (SIGKILL, to their whole process groups) the
// processes whose environment holds owner (OwnerEnv=owner): the ranks,
// and what they started, of an earlier run of this worker that outlived
// it. A worker killed with kill -9 sends its ranks SIGTERM only (see
// sysProcAttr), which a rank may ignore, and reaches none of their
// children. It returns the pids of the processes it found marked.
// Processes it cannot read (another user's) are passed over.
func killOrphans(owner string) []int {
	want := []byte(OwnerEnv + "=" + owner)
	// every marked process first: killing a group takes the members not
	// yet looked at, whose environment is then gone
	marked := procsWhere(func(pid string) bool { return environHas(pid, want) })
	groups := map[int]bool{}
	for _, pid := range marked {
		if g, ok := processGroup(strconv.Itoa(pid)); ok && g > 1 && g != syscall.Getpgrp() && !groups[g] {
			groups[g] = true
			syscall.Kill(-g, syscall.SIGKILL) //nolint:errcheck // gone already is fine
		}
		syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck // gone already is fine
	}
	return marked
}

// procPIDs lists the processes in /proc.
func procPIDs() ([]int, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// hasEntry says whether a NUL-separated environment holds entry.
func hasEntry(env, entry []byte) bool {
	for e := range bytes.SplitSeq(env, []byte{0}) {
		if bytes.Equal(e, entry) {
			return true
		}
	}
	return false
}

// leftovers lists the live processes (zombies not counted) that a rank
// which ended left behind: those still in its process group pgid, and
// those whose environment holds entry (InstanceEnv=...), which is how
// what left the group (setsid, a daemon's double fork) is found.
func leftovers(pgid int, entry string) []int {
	want := []byte(entry)
	return procsWhere(func(pid string) bool {
		g, state, ok := groupAndState(pid)
		return ok && state != 'Z' && state != 'X' && (g == pgid || environHas(pid, want))
	})
}

// procsWhere lists the processes in /proc but this one for which keep
// (given the pid) holds.
func procsWhere(keep func(pid string) bool) []int {
	pids, err := procPIDs()
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, pid := range pids {
		if pid != self && keep(strconv.Itoa(pid)) {
			out = append(out, pid)
		}
	}
	return out
}

// environHas says whether process pid's environment (readable: this
// user's, or any as root) holds entry.
func environHas(pid string, entry []byte) bool {
	env, err := os.ReadFile("/proc/" + pid + "/environ")
	return err == nil && hasEntry(env, entry)
}

// groupAndState reads a process's group and state letter from
// /proc/PID/stat (after the command name in parentheses, which may itself
// hold spaces and parentheses).
func groupAndState(pid string) (int, byte, bool) {
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := bytes.Fields(raw[i+1:]) // state ppid pgrp ...
	if len(f) < 3 || len(f[0]) != 1 {
		return 0, 0, false
	}
	g, err := strconv.Atoi(string(f[2]))
	return g, f[0][0], err == nil
}
