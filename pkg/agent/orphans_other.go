//go:build !linux

package agent

// killOrphans finds no orphans where there is no /proc to look in.
func killOrphans(string) []int { return nil }
