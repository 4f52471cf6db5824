package freeport

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestPortsBelowEphemeralRange(t *testing.T) {
	lo, hi := window()
	ps, err := Ports("127.0.0.1", 20)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ps {
		if p < lo || p >= hi {
			t.Errorf("port %d outside [%d, %d)", p, lo, hi)
		}
		if seen[p] {
			t.Errorf("port %d given twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Errorf("port %d cannot be bound: %v", p, err)
			continue
		}
		l.Close()
	}
	// Later calls never give a port this process holds.
	more, err := Ports("127.0.0.1", 20)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range more {
		if seen[p] {
			t.Errorf("port %d given again", p)
		}
	}
}

func TestRun(t *testing.T) {
	p, err := Run("127.0.0.1", 4)
	if err != nil {
		t.Fatal(err)
	}
	for k := range 4 {
		if _, mine := held[p+k]; !mine {
			t.Errorf("port %d of the run %d..%d is not reserved", p+k, p, p+3)
		}
	}
	if _, err := Run("127.0.0.1", 0); err == nil {
		t.Error("a run of 0 ports was accepted")
	}
}

// TestSkipsBoundAndLocked: a port another listener holds, or another
// process has locked, is never given.
func TestSkipsBoundAndLocked(t *testing.T) {
	if q := os.Getenv("FREEPORT_LOCK"); q != "" {
		return // the child's part is TestLockHelper
	}
	lo, hi := window()
	mu.Lock()
	var busy net.Listener
	p := lo
	for ; p < hi-1 && busy == nil; p++ {
		_, a := held[p]
		_, b := held[p+1]
		if a || b {
			continue
		}
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			busy = l
			break
		}
	}
	mu.Unlock()
	if busy == nil {
		t.Fatal("no port to occupy")
	}
	defer busy.Close()

	// A child process locks p+1 and holds it until its stdin closes.
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelper$")
	cmd.Env = append(os.Environ(), "FREEPORT_LOCK="+strconv.Itoa(p+1))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }() //nolint:errcheck
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "locked" {
		t.Fatalf("child: %q, %v", line, err)
	}

	mu.Lock()
	defer mu.Unlock()
	if reserve("127.0.0.1", p, 1) {
		t.Errorf("port %d, bound by a listener, was reserved", p)
	}
	if reserve("127.0.0.1", p+1, 1) {
		t.Errorf("port %d, locked by another process, was reserved", p+1)
	}
	if _, err := reserveRun("127.0.0.1", 1, p, p+2); err == nil || !strings.Contains(err.Error(), strconv.Itoa(p)) {
		t.Errorf("a window with nothing free gave: %v", err)
	}
}

// TestLockHelper is the child of TestSkipsBoundAndLocked.
func TestLockHelper(t *testing.T) {
	q := os.Getenv("FREEPORT_LOCK")
	if q == "" {
		return
	}
	p, _ := strconv.Atoi(q)
	f, free := lock(p)
	if !free || f == nil {
		t.Fatalf("child could not lock %d", p)
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin) //nolint:errcheck // until the parent closes it
	f.Close()
}
