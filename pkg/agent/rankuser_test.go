package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/security"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// rankUserTrainer records who it runs as and what it can reach: the
// worker's environment (its parent's), its own run directory, its job's
// checkpoint directory and the checkpoint root other jobs share.
const rankUserTrainer = `#!/bin/sh
prev=
for a in "$@"; do
  case "$prev" in --config) out=$(dirname "$a") ;; esac
  prev=$a
done
job=$(basename "$(dirname "$(dirname "$out")")")
storage=$(dirname "$(dirname "$(dirname "$(dirname "$out")")")")
try() { if "$@" > /dev/null 2>&1; then echo yes; else echo no; fi; }
{
  id -u; id -g
  echo "$HOME"; echo "$USER"
  try cat /proc/$PPID/environ
  try touch "$out/probe"
  try touch "$storage/checkpoints/$job/probe"
  try touch "$storage/checkpoints/probe"
  try cat "$out/run.yaml"
} > "$out/who"
case "$job" in fifo-*) mkfifo "$out/metrics.jsonl" ;; esac
`

// TestRanksRunAsTheRankUser: with rank_user, a rank runs as that user
// (uid:gid here, a user without a home: HOME is its run directory), owns
// its run directory and its job's checkpoint directory, and can read
// neither the worker's environment (where its token is) nor write the
// checkpoint root other jobs share. A storage path the user cannot reach
// is refused when the worker starts, naming the directory. As a user
// other than root, a worker refuses rank_user (only root starts
// processes as another user).
func TestRanksRunAsTheRankUser(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc and setuid as on Linux")
	}
	if os.Geteuid() != 0 {
		cfg := testConfig(t, writeTrainer(t, rankUserTrainer))
		cfg.RankUser = "65534:65534"
		_, err := New(Options{Config: cfg, Client: &fakeCoordinator{}, Registry: nil})
		if err == nil || !strings.Contains(err.Error(), "only root starts processes as another user") {
			t.Fatalf("New with rank_user as uid %d: %v, want the refusal", os.Geteuid(), err)
		}
		return
	}
	t.Setenv(TokenEnv, "the-cluster-secret")
	h := startAsNobody(t, func(o *Options) {
		// t.TempDir's directories are the test user's alone (0700)
		_, err := New(*o)
		if !errors.Is(err, ErrOptions) || !strings.Contains(err.Error(), "cannot search or run storage_path "+o.Config.StoragePath) {
			t.Fatalf("New with a storage path the rank user cannot reach: %v", err)
		}
	})
	h.coord.set(newTestTask("ok-user", 0, 1, spec1))
	h.waitState("ok-user", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
	dir := h.runDir("ok-user", 1, 0)
	got := readLines(t, filepath.Join(dir, "who"))
	want := []string{"65534", "65534", dir, "nobody", "no", "yes", "yes", "no", "yes"}
	if !slices.Equal(got, want) {
		t.Fatalf("the rank: uid, gid, HOME, USER, read the worker's environ, write its run dir, its job's checkpoint dir, the shared root, read run.yaml:\n got %q\nwant %q", got, want)
	}
	for _, p := range []string{dir, filepath.Join(h.storage, "checkpoints", "ok-user")} {
		if u := ownerOf(t, p); u != 65534 {
			t.Errorf("%s is uid %d's, want the rank user's", p, u)
		}
	}
	if u := ownerOf(t, filepath.Join(h.storage, "checkpoints")); u != 0 {
		t.Errorf("the shared checkpoint root is uid %d's, want the worker's", u)
	}
}

// startAsNobody runs an agent whose ranks run as uid 65534 (the test
// runs as root), with rankUserTrainer; before is called with the options
// before the test's directories are opened to that user.
func startAsNobody(t *testing.T, before func(*Options)) *harness {
	return start(t, func(o *Options) {
		o.Config.Trainer = writeTrainer(t, rankUserTrainer)
		o.Config.RankUser = "65534:65534"
		o.Config.AllowCommands = true
		o.Relay = o.Client
		if before != nil {
			before(o)
		}
		for _, d := range []string{o.Config.StoragePath, filepath.Dir(o.Config.Trainer)} {
			for p := d; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
				if err := os.Chmod(p, 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}

// TestRankUserLinksNotFollowed: what a rank (as the rank user) leaves in
// the directories it owns cannot lead the worker, as root, to write
// elsewhere, nor block it: a link in place of its output file is
// replaced, not written through; a link in place of its job's staging
// directory fails the rank, naming it; a FIFO in place of its metrics
// file does not hang the worker. Nothing changes where the links point.
func TestRankUserLinksNotFollowed(t *testing.T) {
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("needs root on Linux (TestRanksRunAsTheRankUser checks the refusal otherwise)")
	}
	h := startAsNobody(t, nil)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	// what a rank of an earlier run left: its run directory with a link
	// for stdout.log; a command job's directory with a link for staging
	dir := h.runDir("links-out", 1, 0)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	jobDir := filepath.Join(h.storage, "checkpoints", "links-stage")
	if err := os.MkdirAll(jobDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// and one whose staging link stays in the checkpoint root, leading
	// to another job's directory
	innerDir, other := filepath.Join(h.storage, "checkpoints", "links-inner"), filepath.Join(h.storage, "checkpoints", "links-other")
	for _, d := range []string{innerDir, other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, to := range map[string]string{
		filepath.Join(dir, "stdout.log"):   victim,
		filepath.Join(jobDir, "staging"):   outside,
		filepath.Join(innerDir, "staging"): filepath.Join("..", "links-other"),
	} {
		if err := os.Symlink(to, link); err != nil {
			t.Fatal(err)
		}
	}
	command := "name: c\nruntime: command\ncommand: sh\n"
	h.coord.set(newTestTask("links-out", 0, 1, spec1), newTestTask("links-stage", 0, 1, command),
		newTestTask("links-inner", 0, 1, command), newTestTask("fifo-metrics", 0, 1, spec1))
	for job, d := range map[string]string{"links-stage": jobDir, "links-inner": innerDir} {
		st := h.waitState(job, 0, apiv1.TaskState_TASK_STATE_FAILED)
		if says := "checkpoint directory " + filepath.Join(d, "staging") + ": "; !strings.Contains(st.GetMessage(), says) {
			t.Errorf("%s: %q, want it to say %q", job, st.GetMessage(), says)
		}
	}
	if left, _ := os.ReadDir(other); len(left) != 0 || ownerOf(t, other) != 0 {
		t.Errorf("the other job's directory: %v, owner %d; want it empty and the worker's", left, ownerOf(t, other))
	}
	h.waitState("links-out", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
	h.waitState("fifo-metrics", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED)
	if fi, err := os.Lstat(filepath.Join(dir, "stdout.log")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("stdout.log: %v, %v; want a file of the worker's", fi, err)
	}
	if raw, err := os.ReadFile(victim); err != nil || string(raw) != "keep" {
		t.Errorf("the file the link named: %q, %v", raw, err)
	}
	if left, _ := os.ReadDir(outside); len(left) != 1 {
		t.Errorf("the directory the staging link named holds %v, want only the victim", left)
	}
}

// TestRankUserSteadyPaths: a storage path or checkpoint path that the
// rank user could change on the way (a directory it can write) is
// refused, naming the directory; a sticky one (as /tmp) is not, when
// what follows is not the rank user's.
func TestRankUserSteadyPaths(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("a Linux /tmp (sticky, no links above it)")
	}
	u := &rankUser{spec: "4242:4242", uid: 4242, gid: 4242, groups: []uint32{4242}}
	base := t.TempDir()
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	sticky := filepath.Join(base, "sticky")
	if err := os.Mkdir(sticky, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sticky, 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(sticky, "owned"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(sticky, "owned"), filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	// a link, itself fine, in a directory the rank user can write
	if err := os.Symlink(filepath.Join(sticky, "owned"), filepath.Join(open, "link")); err != nil {
		t.Fatal(err)
	}
	// a directory it owns, though it cannot write it now (it may chmod it)
	its := filepath.Join(base, "its")
	if err := os.Mkdir(its, 0o555); err != nil {
		t.Fatal(err)
	}
	owned := os.Chown(its, 4242, 4242) == nil // as root
	for _, tc := range []struct {
		path, want, refused string
	}{
		{filepath.Join(base, "a", "b"), filepath.Join(base, "a", "b"), ""},
		{filepath.Join(open, "ckpt"), "", open},
		{open, "", open},
		{filepath.Join(sticky, "owned", "ckpt"), filepath.Join(sticky, "owned", "ckpt"), ""},
		{filepath.Join(sticky, "not-yet"), "", sticky},
		{filepath.Join(base, "link", "ckpt"), filepath.Join(sticky, "owned", "ckpt"), ""},
		{filepath.Join(open, "link", "ckpt"), "", open},
		{filepath.Join(its, "ckpt"), "", its},
	} {
		if tc.refused == its && !owned {
			continue // not root: the directory could not be given to uid 4242
		}
		got, err := u.steady(tc.path, "checkpoint.path")
		switch {
		case tc.refused == "" && (err != nil || got != tc.want):
			t.Errorf("%s: %q, %v; want %q", tc.path, got, err, tc.want)
		case tc.refused != "" && (err == nil || !strings.Contains(err.Error(), "can change "+tc.refused+" (it owns or can write it), on the way to checkpoint.path "+tc.path)):
			t.Errorf("%s: %q, %v; want it refused naming %s", tc.path, got, err, tc.refused)
		}
	}
}

func ownerOf(t *testing.T, path string) int {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return statUID(st)
}

// TestRankUserParsing: uid:gid needs no passwd entry, a name or uid does;
// permission bits are read as the kernel reads them.
func TestRankUserParsing(t *testing.T) {
	u, err := lookupRankUser("4242:4343")
	if err != nil || u.uid != 4242 || u.gid != 4343 || !slices.Equal(u.groups, []uint32{4343}) {
		t.Fatalf("4242:4343: %+v, %v", u, err)
	}
	for _, bad := range []string{"no-such-user-here", "4242:x", "987654"} {
		if _, err := lookupRankUser(bad); err == nil || !strings.Contains(err.Error(), `rank_user "`+bad+`"`) {
			t.Errorf("%s: %v, want an error naming it", bad, err)
		}
	}
	for _, root := range []string{"root", "0", "0:0"} {
		if _, err := lookupRankUser(root); err == nil || !strings.Contains(err.Error(), "is root (uid 0)") {
			t.Errorf("%s: %v, want root refused", root, err)
		}
	}
	if daemon, err := lookupRankUser("daemon"); err != nil || daemon.uid == 0 || daemon.name != "daemon" {
		t.Fatalf("daemon: %+v, %v", daemon, err)
	}
	if err := u.mayStart(1000); err == nil {
		t.Error("uid 1000 may start processes as uid 4242")
	}
	if u.mayStart(0) != nil || u.mayStart(4242) != nil {
		t.Error("root, or the user itself, may not start its processes")
	}
	u.groups = append(u.groups, 7)
	for _, tc := range []struct {
		mode     fs.FileMode
		uid, gid uint32
		want     fs.FileMode
		ok       bool
	}{
		{0o700, 4242, 0, 7, true},
		{0o070, 4242, 0, 1, false}, // the owner's bits, not the group's
		{0o750, 0, 4343, 5, true},
		{0o750, 0, 7, 1, true}, // a supplementary group
		{0o750, 0, 8, 1, false},
		{0o751, 0, 8, 1, true},
		{0o755, 0, 0, 2, false},
	} {
		if got := u.may(tc.mode, tc.uid, tc.gid, tc.want); got != tc.ok {
			t.Errorf("mode %04o owned %d:%d, want %o: %v", tc.mode, tc.uid, tc.gid, tc.want, got)
		}
	}
}

// TestRankUserRefusals: what checkRankUser refuses when the worker
// starts, each naming why: data-plane TLS (the ranks would need the
// worker's key), TLS without a token (nothing would scope the ranks'
// relayed calls), a storage path the user could change on the way.
func TestRankUserRefusals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (TestRanksRunAsTheRankUser checks the refusal otherwise)")
	}
	const spec = "65534:65534"
	base := t.TempDir()
	for _, p := range []string{base, filepath.Dir(base)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	trainer := filepath.Join(base, "switchyard")
	if err := os.WriteFile(trainer, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	tls := security.TLSFiles{CA: "/ca.pem", Cert: "/cert.pem", Key: "/key.pem"}
	for _, tc := range []struct {
		name   string
		change func(*Options)
		says   string
	}{
		{"fine", func(*Options) {}, ""},
		{"data-plane TLS", func(o *Options) { o.Config.DataPlaneTLS, o.Config.TLS, o.Token = true, tls, "t" }, "with data_plane_tls"},
		{"TLS without a token", func(o *Options) { o.Config.TLS = tls }, "with TLS needs the cluster's token"},
		{"TLS with a token", func(o *Options) { o.Config.TLS, o.Token = tls, "t" }, ""},
		{"a storage path it can write", func(o *Options) { o.Config.StoragePath = open }, "can change " + open + " (it owns or can write it), on the way to storage_path"},
	} {
		o := Options{Config: workerconfig.Config{RankUser: spec, StoragePath: base}}
		tc.change(&o)
		_, err := checkRankUser(o, trainer)
		if (tc.says == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.says)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.says)
		}
	}
}
