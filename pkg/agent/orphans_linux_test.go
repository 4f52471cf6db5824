package agent

import (
	"bufio"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// orphan is a stand-in for a rank left running by a worker killed with
// kill -9: a shell in its own process group that ignores SIGTERM, with a
// child, both marked with owner.
type orphan struct {
	cmd   *exec.Cmd
	child int
}

func startOrphan(t *testing.T, owner string) *orphan {
	t.Helper()
	cmd := exec.Command("sh", "-c", `trap "" TERM; sleep 300 & echo $!; wait`)
	cmd.Env = append(os.Environ(), OwnerEnv+"="+owner)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }) //nolint:errcheck // best effort
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return &orphan{cmd: cmd, child: child}
}

// running says whether pid is a live process (not gone, not a zombie).
func running(pid int) bool {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(raw), ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(string(raw[i+1:])), "Z")
}

// TestKillOrphans: the processes marked with the worker's owner, and their
// process groups, are killed though they ignore SIGTERM; those of another
// worker (another id or storage) are not.
func TestKillOrphans(t *testing.T) {
	mine := startOrphan(t, "w1@/srv/a")
	other := startOrphan(t, "w1@/srv/b")
	killed := killOrphans("w1@/srv/a")
	if !slices.Contains(killed, mine.cmd.Process.Pid) || !slices.Contains(killed, mine.child) {
		t.Errorf("killed %v, want the shell %d and its child %d", killed, mine.cmd.Process.Pid, mine.child)
	}
	mine.cmd.Wait() //nolint:errcheck // killed
	deadline := time.Now().Add(10 * time.Second)
	for running(mine.child) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if running(mine.child) {
		t.Errorf("the orphan's child %d still runs", mine.child)
	}
	if !running(other.cmd.Process.Pid) || !running(other.child) || slices.Contains(killed, other.cmd.Process.Pid) {
		t.Errorf("another worker's rank was killed (killed %v)", killed)
	}
}

// TestOrphansKilledAtStart: a worker that starts again kills the ranks of
// its earlier run before it runs any, and marks the ranks it starts.
func TestOrphansKilledAtStart(t *testing.T) {
	var left *orphan
	h := start(t, func(o *Options) { left = startOrphan(t, o.Config.ID+"@"+o.Config.StoragePath) })
	done := make(chan struct{})
	go func() { left.cmd.Wait(); close(done) }() //nolint:errcheck // killed
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the earlier run's rank still runs 30s after the worker started")
	}
	h.coord.set(newTestTask("owner", 0, 1, spec1))
	h.waitState("owner", 0, apiv1.TaskState_TASK_STATE_RUNNING)
	dir := h.runDir("owner", 1, 0)
	eventually(t, "pid file", func() bool { _, err := os.Stat(dir + "/pid"); return err == nil })
	pid, _ := pidAlive(t, dir)
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil || !hasEntry(env, []byte(OwnerEnv+"=w1@"+h.storage)) {
		t.Fatalf("the rank's environment lacks %s=w1@%s (%v)", OwnerEnv, h.storage, err)
	}
}
