package checkpoint

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing the given range of f to
// the disk without waiting for it (sync_file_range SYNC_FILE_RANGE_WRITE).
// It is only a hint: durability still comes from fsync, so errors are
// ignored.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
