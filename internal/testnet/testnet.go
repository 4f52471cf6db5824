// Package testnet holds test helpers for servers that misbehave at the
// connection level (accept and hang, fail a handshake), which several
// packages' tests need.
package testnet

import (
	"net"
	"sync"
	"testing"
)

// Accept serves lis until the test ends: each accepted connection goes to
// handle (nil: the connection is held open, never read: a peer whose
// process is stopped). Every connection is closed, and the accept loop
// has ended, when the test's cleanup runs.
func Accept(t testing.TB, lis net.Listener, handle func(net.Conn)) {
	t.Helper()
	var (
		mu   sync.Mutex
		held []net.Conn
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			if handle != nil {
				wg.Add(1)
				go func() { defer wg.Done(); handle(c) }()
			}
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}
