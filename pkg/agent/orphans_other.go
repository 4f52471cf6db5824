//go:build !linux

package agent

import "syscall"

// killOrphans finds no orphans where there is no /proc to look in.
func killOrphans(string) []int { return nil }

// leftovers finds what is left of a rank's process group where there is
// no /proc: the group's leader id when any member is alive.
func leftovers(pgid int, _ string) []int {
	if syscall.Kill(-pgid, 0) == nil {
		return []int{pgid}
	}
	return nil
}
