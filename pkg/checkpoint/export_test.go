package checkpoint

import "time"

// SetEtcdCommitTimeout changes the bound of one etcd commit for a test
// and returns the function that restores it.
func SetEtcdCommitTimeout(d time.Duration) (restore func()) {
	old := etcdCommitTimeout
	etcdCommitTimeout = d
	return func() { etcdCommitTimeout = old }
}
