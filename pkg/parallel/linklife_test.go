package parallel

import (
	"errors"
	"testing"
)

func TestLinkLife(t *testing.T) {
	isDead := func(lf *linkLife) bool {
		select {
		case <-lf.dead:
			return lf.ctx.Err() != nil
		default:
			return false
		}
	}
	errA, errB := errors.New("a"), errors.New("b")

	var lf linkLife
	lf.init()
	if lf.closing() || isDead(&lf) || lf.failure() != nil {
		t.Fatal("a new link is not open")
	}
	lf.beginClose()
	if !lf.closing() || isDead(&lf) {
		t.Fatal("beginClose: want closing, alive")
	}
	if !lf.die(errA) || !isDead(&lf) || lf.failure() != errA || !lf.closing() {
		t.Fatal("die after closing: want dead with its error, still known as closed in order")
	}
	if lf.die(errB) || lf.failure() != errA {
		t.Fatal("dead is final: a second die must change nothing")
	}
	lf.beginClose() // no way back
	if !isDead(&lf) {
		t.Fatal("beginClose revived a dead link")
	}

	var lost linkLife
	lost.init()
	if !lost.die(errB) || lost.closing() || lost.failure() != errB {
		t.Fatal("die while open: want dead with its error and not an orderly close")
	}
}
