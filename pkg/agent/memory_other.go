//go:build !linux

package agent

func groupMemory(int) (int64, error) { return 0, errNoMemoryAccounting }
