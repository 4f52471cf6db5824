package agent

import "syscall"

// sysProcAttr starts a rank in its own process group (so that stopping it
// reaches every process it started) and has the kernel send it SIGTERM
// if the worker dies, so that a restarted worker finds its ports free.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
