package etcdconn

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/devcluster"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// TestUserFromTheEnvironment: against an etcd with auth on, a client
// without the user is refused and one with it (from the environment)
// reads and writes.
func TestUserFromTheEnvironment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e, err := devcluster.StartEtcd(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	admin, err := Open(e.Endpoints, Config{Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { _, err := admin.RoleAdd(ctx, "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "root", "pw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	admin.Close()
	env := map[string]string{UsernameEnv: "root", PasswordEnv: "pw"}
	withUser, err := Open(e.Endpoints, Config{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	defer withUser.Close()
	if _, err := withUser.Put(ctx, "/switchyard/x", "1"); err != nil {
		t.Fatalf("with the user: %v", err)
	}
	anon, err := Open(e.Endpoints, Config{Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Get(ctx, "/switchyard/x"); err == nil {
		t.Fatal("read without the user")
	}
	// a user in Config wins over the environment's
	wrongEnv := func(k string) string { return map[string]string{UsernameEnv: "root", PasswordEnv: "wrong"}[k] }
	explicit, err := Open(e.Endpoints, Config{Username: "root", Password: "pw", Getenv: wrongEnv})
	if err != nil {
		t.Fatalf("the user in Config: %v", err)
	}
	defer explicit.Close()
	if _, err := explicit.Get(ctx, "/switchyard/x"); err != nil {
		t.Fatalf("read with the user in Config: %v", err)
	}
	if _, err := Open(e.Endpoints, Config{Getenv: wrongEnv}); err == nil {
		t.Fatal("connected with a wrong password from the environment")
	}
	if _, err := Open(e.Endpoints, Config{Username: "root"}); err == nil || !strings.Contains(err.Error(), "both") {
		t.Fatalf("a Config user without a password: %v", err)
	}
	if _, err := Open(e.Endpoints, Config{Getenv: func(k string) string { return map[string]string{UsernameEnv: "root"}[k] }}); err == nil || !strings.Contains(err.Error(), PasswordEnv) {
		t.Fatalf("a user without a password: %v", err)
	}
	if _, err := Open(e.Endpoints, Config{TLS: security.TLSFiles{CA: "/nonexistent/ca.pem"}}); err == nil || !strings.Contains(err.Error(), "etcd TLS") {
		t.Fatalf("half the TLS files: %v", err)
	}
}
