package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/security"
)

// buildCLI compiles this command into a temporary directory.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "switchyard")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

const smallRunYAML = `
model: {vocab: 256, dim: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, top_k: 2, hidden: 32}
micro_batch: 2
accumulation: 1
steps: 100000
data: {demo_bytes: 16384, eval_seqs: 4}
`

// Kill -9 one rank of a 3-process run mid-training: every other rank must
// notice on its own and exit with an error that names the lost peer, within
// the collective timeout, and the launcher must report the failed rank —
// no hang.
func TestLaunchKill9OneRank(t *testing.T) { launchAndHurt(t, syscall.SIGKILL) }

// A rank that stalls (SIGSTOP) is the same failure after the collective
// timeout: the others time out with an error, the launcher kills the
// stalled one after its grace period.
func TestLaunchStalledRank(t *testing.T) { launchAndHurt(t, syscall.SIGSTOP) }

func launchAndHurt(t *testing.T, sig syscall.Signal) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildCLI(t)
	cfg := filepath.Join(t.TempDir(), "run.yaml")
	if err := os.WriteFile(cfg, []byte(smallRunYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	const commTimeout = 5 * time.Second
	grace := 60 * time.Second
	if sig == syscall.SIGSTOP {
		grace = 5 * time.Second
	}
	cmd := exec.Command(bin, "launch", "--nproc", "3", "--comm-timeout", commTimeout.String(), "--grace", grace.String(), "--", "--config", cfg)
	stderr, _ := cmd.StderrPipe()
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	pidRe := regexp.MustCompile(`launch: rank (\d+) pid (\d+)`)
	pids := map[int]int{}
	var all strings.Builder
	var mu sync.Mutex
	training := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			all.WriteString(line + "\n")
			if m := pidRe.FindStringSubmatch(line); m != nil {
				r, _ := strconv.Atoi(m[1])
				p, _ := strconv.Atoi(m[2])
				pids[r] = p
			}
			mu.Unlock()
			if strings.Contains(line, "step 1/") {
				once.Do(func() { close(training) })
			}
		}
	}()
	select {
	case <-training:
	case <-time.After(90 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("no training step within 90 s:\n%s", all.String())
	}
	time.Sleep(500 * time.Millisecond) // mid-run, not at the first step's edge
	mu.Lock()
	victim := pids[1]
	mu.Unlock()
	if err := syscall.Kill(victim, sig); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitErr := make(chan error, 1)
	go func() { <-done; waitErr <- cmd.Wait() }()
	var err error
	select {
	case err = <-waitErr:
	case <-time.After(commTimeout + grace + 30*time.Second):
		t.Fatal("launcher still running long after the fault: a rank hangs")
	}
	took := time.Since(killed)
	mu.Lock()
	out := all.String()
	mu.Unlock()
	t.Logf("launcher exited %v after the kill: %v\n%s", took.Round(time.Millisecond), err, lastLines(out, 8))
	if err == nil {
		t.Fatalf("launcher exited 0 after a rank was killed:\n%s", out)
	}
	if !strings.Contains(out, "switchyard: launch: rank 1 failed (signal: killed)") {
		t.Errorf("launcher does not name the failed rank:\n%s", out)
	}
	want := "(peer|closed|lost)"
	if sig == syscall.SIGSTOP {
		// the stalled rank is found by a timeout; a survivor may instead
		// see the other survivor, which timed out first, close on it
		want = "(timed out|peer closed)"
		if !regexp.MustCompile(`\[rank [02]\] switchyard: .*timed out`).MatchString(out) {
			t.Errorf("no surviving rank timed out waiting for the stalled one:\n%s", out)
		}
	} else if strings.Contains(out, "killing") {
		t.Errorf("surviving ranks had to be killed instead of failing on their own:\n%s", out)
	}
	for _, r := range []string{"0", "2"} {
		re := regexp.MustCompile(`\[rank ` + r + `\] switchyard: .*` + want)
		if !re.MatchString(out) {
			t.Errorf("rank %s printed no clear error about the lost peer:\n%s", r, out)
		}
	}
	limit := commTimeout + 10*time.Second
	if sig == syscall.SIGSTOP {
		limit += grace
	}
	if took > limit {
		t.Errorf("ranks took %v to fail (timeout %v)", took, commTimeout)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestLaunchOverTLS: two ranks whose run config turns on the encrypted
// data plane (dist.tls, what a worker with data_plane_tls writes) train
// the same losses as over plain TCP, bit for bit.
func TestLaunchOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildCLI(t)
	dir := t.TempDir()
	p, err := security.EphemeralPEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"ca.pem": p.CA, "cert.pem": p.Cert, "key.pem": p.Key}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := strings.Replace(smallRunYAML, "steps: 100000", "steps: 6", 1)
	tlsYAML := base + fmt.Sprintf("dist: {tls: {ca: %s/ca.pem, cert: %s/cert.pem, key: %s/key.pem}}\n", dir, dir, dir)
	losses := func(yaml string) []string {
		cfg := filepath.Join(t.TempDir(), "run.yaml")
		if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "launch", "--nproc", "2", "--", "--config", cfg).CombinedOutput()
		if err != nil {
			t.Fatalf("launch: %v\n%s", err, out)
		}
		return regexp.MustCompile(`step \d+/6\s+loss [0-9.]+`).FindAllString(string(out), -1)
	}
	plain, enc := losses(base), losses(tlsYAML)
	if len(plain) == 0 || strings.Join(plain, ";") != strings.Join(enc, ";") {
		t.Fatalf("losses over TLS %q, over plain TCP %q", enc, plain)
	}
}

// TestRankGPUs: launch --gpus spreads the ranks over the GPUs in turn,
// over the ones CUDA_VISIBLE_DEVICES names when it is set.
func TestRankGPUs(t *testing.T) {
	for _, tc := range []struct {
		nproc, gpus int
		visible     string
		set         bool
		want        string
	}{
		{4, 0, "", false, "[]"},
		{4, 2, "", false, "[0 1 0 1]"},
		{3, 4, "", false, "[0 1 2]"},
		{4, 2, "3,5", true, "[3 5 3 5]"},
		{2, 2, "GPU-aa, GPU-bb,7", true, "[GPU-aa GPU-bb]"},
	} {
		got, err := rankGPUs(tc.nproc, tc.gpus, tc.visible, tc.set)
		if err != nil || fmt.Sprint(got) != tc.want {
			t.Errorf("%d ranks, %d GPUs, %q: %v, %v; want %s", tc.nproc, tc.gpus, tc.visible, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ visible, want string }{
		{"0,1", `--gpus 3: CUDA_VISIBLE_DEVICES="0,1" names only 2`},
		{"", `--gpus 3: CUDA_VISIBLE_DEVICES="" names only 0`}, // set empty: no GPU visible
		{"0,,1,2", `--gpus 3: CUDA_VISIBLE_DEVICES="0,,1,2" has an empty entry`},
	} {
		if _, err := rankGPUs(2, 3, tc.visible, true); err == nil || err.Error() != tc.want {
			t.Errorf("CUDA_VISIBLE_DEVICES=%q: %v, want %s", tc.visible, err, tc.want)
		}
	}
	if _, err := rankGPUs(2, -1, "", false); err == nil {
		t.Error("--gpus -1 accepted")
	}
}

// TestLaunchBalanceNode: --balance node balances each node's ranks
// together (--ranks-per-node): with one node of all 4 ranks it trains the
// global batch's losses bit for bit, with 2 nodes of 2 it trains other
// losses (its LBL statistics cover half the ranks), as --balance none
// (each rank alone) does.
func TestLaunchBalanceNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildCLI(t)
	cfg := filepath.Join(t.TempDir(), "run.yaml")
	if err := os.WriteFile(cfg, []byte(strings.Replace(smallRunYAML, "steps: 100000", "steps: 3", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	loss := func(args ...string) float64 {
		t.Helper()
		argv := append([]string{"launch", "--nproc", "4", "--ep", "2"}, args...)
		argv = append(argv, "--", "--config", cfg, "--json")
		cmd := exec.Command(bin, argv...)
		stderr.Reset()
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("launch %v: %v\n%s", args, err, lastLines(stderr.String(), 20))
		}
		var js strings.Builder
		for _, line := range strings.Split(string(out), "\n") {
			if rest, ok := strings.CutPrefix(line, "[rank 0] "); ok {
				js.WriteString(rest + "\n")
			}
		}
		var rep struct {
			Loss *float64 `json:"final_train_loss"`
		}
		if err := json.Unmarshal([]byte(js.String()), &rep); err != nil || rep.Loss == nil {
			t.Fatalf("launch %v: rank 0's report: %v\n%s", args, err, js.String())
		}
		return *rep.Loss
	}
	dp := loss("--balance", "dp")
	if one := loss("--balance", "node"); one != dp {
		t.Errorf("balance node on one node: final loss %v, balance dp %v (want the same)", one, dp)
	}
	two := loss("--balance", "node", "--ranks-per-node", "2")
	if two == dp {
		t.Errorf("balance node on 2 nodes of 2 trained balance dp's loss %v", dp)
	}
	if !strings.Contains(stderr.String(), "LBL global coef 0.01 (balance node: 2 ranks)") {
		t.Errorf("rank 0's header does not say its balance group:\n%s", lastLines(stderr.String(), 20))
	}
	if none := loss("--balance", "none"); none == dp || none == two {
		t.Errorf("balance none: %v (dp %v, node of 2 %v): want a loss of its own", none, dp, two)
	}
}

// TestLaunchHosts: the node names launch gives its ranks.
func TestLaunchHosts(t *testing.T) {
	for _, tc := range []struct {
		nproc, perNode, tp int
		want               string
		err                string
	}{
		{4, 0, 1, "node0,node0,node0,node0", ""},
		{4, 2, 1, "node0,node0,node1,node1", ""},
		{4, 1, 1, "node0,node1,node2,node3", ""},
		{4, 4, 2, "node0,node0,node0,node0", ""},
		{4, 3, 1, "", "--ranks-per-node 3 does not divide --nproc 4"},
		{4, 2, 4, "", "--ranks-per-node 2 is not a multiple of --tp 4"},
		{4, -1, 1, "", "--ranks-per-node -1: must be >= 0"},
	} {
		hosts, err := launchHosts(tc.nproc, tc.perNode, tc.tp)
		got := strings.Join(hosts, ",")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("launchHosts(%d, %d, %d) = %q, %v; want error %q", tc.nproc, tc.perNode, tc.tp, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("launchHosts(%d, %d, %d) = %q, %v; want %q", tc.nproc, tc.perNode, tc.tp, got, err, tc.want)
		}
	}
}

// TestDistFlagsHosts: a rank's hosts come from --hosts, else from the
// host part of its peers' addresses; balance node without either, or a
// parallel degree in one process, is refused naming the flag.
func TestDistFlagsHosts(t *testing.T) {
	f := distFlags{world: 4, tp: 1, ep: 1, balance: "node", peers: "10.0.0.1:1,10.0.0.1:2,10.0.0.2:1,10.0.0.2:2"}
	l, err := f.layout()
	if err != nil {
		t.Fatal(err)
	}
	if g := fmt.Sprint(l.BalanceGroup(3)); g != "[2 3]" {
		t.Errorf("peers on two hosts: rank 3 balances with %s, want [2 3]", g)
	}
	f.hosts = "a,b,a,b"
	if l, err = f.layout(); err != nil {
		t.Fatal(err)
	}
	if g := fmt.Sprint(l.BalanceGroup(0)); g != "[0 2]" {
		t.Errorf("--hosts a,b,a,b: rank 0 balances with %s, want [0 2]", g)
	}
	f.hosts = "a,b"
	if _, err := f.layout(); err == nil || !strings.Contains(err.Error(), "--hosts has 2 hosts for --world 4") {
		t.Errorf("2 hosts for 4 ranks: %v", err)
	}
	for _, tc := range []struct {
		f   distFlags
		err string
	}{
		{distFlags{world: 1, tp: 2, ep: 1, balance: "dp"}, "one process (--world 1) runs without parallelism"},
		{distFlags{world: 1, tp: 1, ep: 2, balance: "dp"}, "switchyard launch --nproc N"},
		{distFlags{world: 1, tp: 1, ep: 1, balance: "foo"}, `--balance "foo" is not one of dp, node, none`},
		{distFlags{world: 1, tp: 1, ep: 1, balance: "none"}, ""},
		{distFlags{world: 2, tp: 2, ep: 1, balance: "foo"}, ""}, // connect checks a run of several
	} {
		err := tc.f.check()
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("check(%+v) = %v, want %q", tc.f, err, tc.err)
		}
	}
}
