package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// rankUser is the OS user that ranks run as (workerconfig.Config.RankUser).
type rankUser struct {
	spec     string // as the config gives it
	name     string // "" for a uid without a passwd entry
	uid, gid uint32
	groups   []uint32 // supplementary, the primary group included
	home     string   // "" when unknown or not a directory
}

// lookupRankUser resolves rank_user: a user name or a uid (from the
// passwd and group databases), or uid:gid as given (no entry needed).
func lookupRankUser(spec string) (*rankUser, error) {
	u := &rankUser{spec: spec}
	if uidText, gidText, pair := strings.Cut(spec, ":"); pair {
		uid, uerr := strconv.ParseUint(uidText, 10, 32)
		gid, gerr := strconv.ParseUint(gidText, 10, 32)
		if uerr != nil || gerr != nil {
			return nil, fmt.Errorf("rank_user %q: want uid:gid, both numbers", spec)
		}
		u.uid, u.gid, u.groups = uint32(uid), uint32(gid), []uint32{uint32(gid)}
		if pw, err := user.LookupId(uidText); err == nil {
			u.name, u.home = pw.Username, pw.HomeDir
		}
		return u.checkHome().notRoot()
	}
	var pw *user.User
	var err error
	if _, numeric := strconv.ParseUint(spec, 10, 32); numeric == nil {
		pw, err = user.LookupId(spec)
	} else {
		pw, err = user.Lookup(spec)
	}
	if err != nil {
		return nil, fmt.Errorf("rank_user %q: %w (give uid:gid for a user without a passwd entry)", spec, err)
	}
	uid, uerr := strconv.ParseUint(pw.Uid, 10, 32)
	gid, gerr := strconv.ParseUint(pw.Gid, 10, 32)
	if uerr != nil || gerr != nil {
		return nil, fmt.Errorf("rank_user %q: uid %q, gid %q: not numbers", spec, pw.Uid, pw.Gid)
	}
	u.name, u.home, u.uid, u.gid = pw.Username, pw.HomeDir, uint32(uid), uint32(gid)
	u.groups = []uint32{u.gid}
	if ids, err := pw.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil && !slices.Contains(u.groups, uint32(g)) {
				u.groups = append(u.groups, uint32(g))
			}
		}
	}
	return u.checkHome().notRoot()
}

// notRoot refuses root as the rank user: it would be the worker's own.
func (u *rankUser) notRoot() (*rankUser, error) {
	if u.uid == 0 {
		return nil, fmt.Errorf("rank_user %q is root (uid 0): name an unprivileged user, or leave rank_user out", u.spec)
	}
	return u, nil
}

func (u *rankUser) checkHome() *rankUser {
	if st, err := os.Stat(u.home); u.home != "" && (err != nil || !st.IsDir()) {
		u.home = "" // /nonexistent, as nobody's
	}
	return u
}

func (u *rankUser) String() string {
	if u.name != "" {
		return fmt.Sprintf("%s (uid %d, gid %d)", u.name, u.uid, u.gid)
	}
	return fmt.Sprintf("uid %d, gid %d", u.uid, u.gid)
}

// mayStart checks that a worker running as euid can start processes as u:
// root can, any user can as itself.
func (u *rankUser) mayStart(euid int) error {
	if euid != 0 && uint32(euid) != u.uid {
		return fmt.Errorf("rank_user %q: this worker runs as uid %d; only root starts processes as another user (run the worker as root, or leave rank_user out)", u.spec, euid)
	}
	return nil
}

// credential is what a rank's process runs as.
func (u *rankUser) credential() *syscall.Credential {
	return &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: slices.Clone(u.groups)}
}

// environ names the user to the rank: HOME (its home, or the rank's run
// directory when it has none), USER and LOGNAME; they come after the
// worker's, which they replace.
func (u *rankUser) environ(runDir string) []string {
	home := u.home
	if home == "" {
		home = runDir
	}
	env := []string{"HOME=" + home}
	if u.name != "" {
		env = append(env, "USER="+u.name, "LOGNAME="+u.name)
	}
	return env
}

// own gives the rank the directories (and files) it writes to.
func (u *rankUser) own(paths ...string) error {
	for _, p := range paths {
		if err := os.Lchown(p, int(u.uid), int(u.gid)); err != nil {
			return fmt.Errorf("give %s to rank_user %s: %w", p, u, err)
		}
	}
	return nil
}

// may reports whether u has permission bits want (of 0o7: r=4, w=2, x=1)
// on a file of mode m owned by uid:gid, as the kernel's owner, group,
// other rule decides (no ACLs).
func (u *rankUser) may(m fs.FileMode, uid, gid uint32, want fs.FileMode) bool {
	perm := m.Perm()
	switch {
	case uid == u.uid:
		perm >>= 6
	case gid == u.gid || slices.Contains(u.groups, gid):
		perm >>= 3
	}
	return perm&want == want
}

// reach checks that u can get to path (search permission on every
// directory above it) and has want on path itself, naming what stops it.
func (u *rankUser) reach(path string, want fs.FileMode, what string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	check := func(p string, bits fs.FileMode) error {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("rank_user %s cannot reach %s %s: %w", u, what, path, err)
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return nil // not a unix stat: leave it to the kernel
		}
		if !u.may(st.Mode(), uint32(sys.Uid), uint32(sys.Gid), bits) {
			return fmt.Errorf("rank_user %s cannot %s %s %s: %s is mode %04o, owner uid %d, group gid %d",
				u, verb(bits), what, path, p, st.Mode().Perm(), sys.Uid, sys.Gid)
		}
		return nil
	}
	chain := pathChain(abs)
	for _, p := range chain[:len(chain)-1] {
		if err := check(p, 1); err != nil {
			return err
		}
	}
	return check(abs, want)
}

func verb(bits fs.FileMode) string {
	var vs []string
	for _, b := range []struct {
		bit  fs.FileMode
		verb string
	}{{4, "read"}, {2, "write"}, {1, "search or run"}} {
		if bits&b.bit != 0 {
			vs = append(vs, b.verb)
		}
	}
	if len(vs) == 0 {
		return "reach"
	}
	return strings.Join(vs, " and ")
}

// steady resolves path (links in the part that exists) and checks that
// no rank could change the way to it after the check, through the path as
// written or where any part of it leads: for every element, the rank user
// owns none of the directories on the way to it and can write none, but a
// sticky one (as /tmp) whose next element is not its own. The worker then
// makes and opens what is below through the path returned, the resolved
// one.
func (u *rankUser) steady(path, what string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	existing, rest := abs, ""
	for {
		if _, err := os.Lstat(existing); err == nil || filepath.Dir(existing) == existing {
			break
		}
		rest = filepath.Join(filepath.Base(existing), rest)
		existing = filepath.Dir(existing)
	}
	refuse := func(bad string, err error) (string, error) {
		if err == nil {
			err = fmt.Errorf("rank_user %s can change %s (it owns or can write it), on the way to %s %s: a rank could put a link there for the worker (root) to follow; use a directory only the worker can write", u, bad, what, path)
		}
		return "", err
	}
	// each element as written, in the directory it is in (resolved)
	for _, p := range pathChain(existing)[1:] {
		dir, err := filepath.EvalSymlinks(filepath.Dir(p))
		if err != nil {
			return refuse("", err)
		}
		if bad, err := u.unsteady(dir, filepath.Join(dir, filepath.Base(p))); err != nil || bad != "" {
			return refuse(bad, err)
		}
	}
	// where it leads, and what is to be made there
	resolved, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return refuse("", err)
	}
	next := ""
	if rest != "" {
		next = filepath.Join(resolved, strings.Split(rest, string(filepath.Separator))[0])
	}
	if bad, err := u.unsteady(resolved, next); err != nil || bad != "" {
		return refuse(bad, err)
	}
	return filepath.Join(resolved, rest), nil
}

// unsteady is the first directory on the way to dir (no links in it),
// dir included, that u could change, given that next (in dir; "" for
// none) is what the way leads on to: "" when none.
func (u *rankUser) unsteady(dir, next string) (string, error) {
	chain := append(pathChain(dir), next)
	for i, p := range chain[:len(chain)-1] {
		st, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		switch {
		case !ok:
			continue // not a unix stat: leave it to the kernel
		case sys.Uid == u.uid: // its owner may chmod it
			return p, nil
		case !u.may(st.Mode(), uint32(sys.Uid), uint32(sys.Gid), 2):
			continue
		case st.Mode()&fs.ModeSticky != 0 && chain[i+1] != "":
			if n, err := os.Lstat(chain[i+1]); err == nil && statUID(n) != int(u.uid) {
				continue // only its owner may move what is there
			}
		}
		return p, nil
	}
	return "", nil
}

// mkdirNoLinks makes rel and its missing parents in r, each a directory
// of its own: a link on the way, even one that stays in r (a rank's
// directory leading to another job's), is an error, not followed.
func mkdirNoLinks(r *os.Root, rel string) error {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	for i := range parts {
		p := filepath.Join(parts[:i+1]...)
		fi, err := r.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			if err := r.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			fi, err = r.Lstat(p)
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory (%v): a link there is not followed", p, fi.Mode().Type())
		}
	}
	return nil
}

// pathChain is "/" and every directory down to the absolute path p, p
// last.
func pathChain(p string) []string {
	var chain []string
	for ; ; p = filepath.Dir(p) {
		chain = append(chain, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	slices.Reverse(chain)
	return chain
}

// giveRank hands what the worker made for a rank in directories of its
// own (the run directory) to the rank user, when there is one, and checks
// that the user reaches them (an umask or a storage_path mode may keep it
// out of a directory above). The run.yaml in it stays the worker's (mode
// 0644: the rank reads it).
func (a *Agent) giveRank(paths ...string) error {
	u := a.ranks
	if u == nil {
		return nil
	}
	if err := u.own(paths...); err != nil {
		return err
	}
	for _, p := range paths {
		if err := u.reach(p, 2, "its directory"); err != nil {
			return err
		}
	}
	return nil
}

// checkpointDirs makes the directories rels under the checkpoint root:
// the job's own directory and, for a command job, its staging
// directories, and gives them to the rank user when there is one: then
// through the root's steady path and an os.Root, and none of them may be
// a link, since the job's directory is the rank user's: a link a rank
// made there cannot lead the worker elsewhere.
func (a *Agent) checkpointDirs(root string, rels ...string) error {
	if a.ranks == nil { // the rank is the worker's user: as it always was
		for _, rel := range rels {
			if err := os.MkdirAll(filepath.Join(root, rel), 0o755); err != nil {
				return err
			}
		}
		return nil
	}
	root, err := a.ranks.steady(root, "checkpoint.path")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("checkpoint root: %w", err)
	}
	defer r.Close()
	for _, rel := range rels {
		if err := mkdirNoLinks(r, rel); err != nil {
			return fmt.Errorf("checkpoint directory %s: %w", filepath.Join(root, rel), err)
		}
		if err := r.Lchown(rel, int(a.ranks.uid), int(a.ranks.gid)); err != nil {
			return fmt.Errorf("give checkpoint directory %s to rank_user %s: %w", filepath.Join(root, rel), a.ranks, err)
		}
		if err := a.ranks.reach(filepath.Join(root, rel), 3, "its checkpoint directory"); err != nil {
			return err
		}
	}
	return nil
}

// checkRankUser is New's check of rank_user: the worker may start
// processes as that user, who reaches the storage path and runs the
// trainer. A TLS key the user could read is logged.
func checkRankUser(o Options, trainer string) (*rankUser, error) {
	if o.Config.RankUser == "" {
		return nil, nil
	}
	u, err := lookupRankUser(o.Config.RankUser)
	if err != nil {
		return nil, err
	}
	if err := u.mayStart(os.Geteuid()); err != nil {
		return nil, err
	}
	if err := u.reach(o.Config.StoragePath, 1, "storage_path"); err != nil {
		return nil, err
	}
	if _, err := u.steady(o.Config.StoragePath, "storage_path"); err != nil {
		return nil, err
	}
	if o.Config.DataPlaneTLS {
		return nil, fmt.Errorf("rank_user %q with data_plane_tls: the ranks would need the worker's TLS key for their connections; turn one off", u.spec)
	}
	if o.Config.TLS.Enabled() && o.Token == "" {
		return nil, fmt.Errorf("rank_user %q with TLS needs the cluster's token ($%s): ranks reach the coordinator through the worker with rank tokens made from the worker's", u.spec, TokenEnv)
	}
	if err := u.reach(trainer, 1, "the trainer"); err != nil {
		return nil, err
	}
	if key := o.Config.TLS.Key; key != "" && u.reach(key, 4, "tls.key") == nil && o.Logger != nil {
		o.Logger.Warn("rank_user can read the worker's TLS key: keep it from other users (chmod 600)", "rank-user", u.String(), "tls-key", key)
	}
	return u, nil
}

// statUID is the owner of a file stat gave (-1 when not a unix stat).
func statUID(st fs.FileInfo) int {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(sys.Uid)
	}
	return -1
}

// openNoFollow opens a regular file of a rank's run directory as the
// worker: a symbolic link there (a rank of an earlier run of the same
// attempt, perhaps as another user, may have made one) is an error, not
// followed, and so is anything but a regular file (a FIFO would block the
// open, or every write). Only the last element needs it: the directories
// above are the worker's. O_NONBLOCK does nothing to a regular file.
func openNoFollow(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o644)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fmt.Errorf("open %s: not a regular file (%s)", path, st.Mode().Type())
		}
		return nil, err
	}
	return f, nil
}

// createFresh makes path a new, empty file of the worker's: whatever was
// there (a file of an earlier run, or a link or hard link a rank left) is
// removed, not written through.
func createFresh(path string) (*os.File, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return openNoFollow(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY)
}
