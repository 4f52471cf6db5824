package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// Failpoint names, in the order a save passes them.
const (
	// FailBeforeShardWrite: a save is about to write its first shard.
	FailBeforeShardWrite = "before-shard-write"
	// FailAfterFirstShard: one shard is durable, the others are not written.
	FailAfterFirstShard = "after-first-shard"
	// FailAfterShardWrite: every shard is durable; nothing is committed.
	FailAfterShardWrite = "after-shard-write"
	// FailAfterCommit: the catalogue has committed the manifest.
	FailAfterCommit = "after-commit"
	// FailAfterMarkDeleting: a deletion is catalogued, no file removed.
	FailAfterMarkDeleting = "after-mark-deleting"
	// FailAfterDeleteFiles: a deletion removed the files, not the entry.
	FailAfterDeleteFiles = "after-delete-files"
)

// FailpointEnv names the environment variable read by Failpoint: a comma
// list of name=action, where action is "exit" (os.Exit(137) at once, as
// abrupt as a SIGKILL for this package: no deferred code runs, nothing is
// flushed), "error" (the operation fails with ErrFailpoint) or "panic".
const FailpointEnv = "SWITCHYARD_FAILPOINTS"

// ErrFailpoint is returned by an operation stopped by an "error" failpoint.
var ErrFailpoint = errors.New("checkpoint: failpoint")

var (
	fpMu   sync.RWMutex
	fpHook func(name string) error
)

// SetFailpointHook installs a function that every Failpoint calls (after
// the environment variable is consulted); a non-nil error it returns
// fails the operation. nil removes it. For tests.
func SetFailpointHook(h func(name string) error) {
	fpMu.Lock()
	fpHook = h
	fpMu.Unlock()
}

// Failpoint is called by this package at the named crash-test points. It
// does nothing unless FailpointEnv or SetFailpointHook arms it.
func Failpoint(name string) error {
	if env := os.Getenv(FailpointEnv); env != "" {
		for _, item := range strings.Split(env, ",") {
			n, action, _ := strings.Cut(strings.TrimSpace(item), "=")
			if n != name {
				continue
			}
			switch action {
			case "exit":
				os.Exit(137)
			case "panic":
				panic("checkpoint: failpoint " + name)
			case "error", "":
				return fmt.Errorf("%w %s", ErrFailpoint, name)
			}
		}
	}
	fpMu.RLock()
	h := fpHook
	fpMu.RUnlock()
	if h != nil {
		return h(name)
	}
	return nil
}
