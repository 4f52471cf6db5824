//go:build unix && !linux

package agent

import "syscall"

// sysProcAttr starts a rank in its own process group, so that stopping it
// reaches every process it started.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
