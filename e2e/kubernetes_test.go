package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/switchyard-ml/switchyard/deploy/kubernetes/manifests"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/security"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// The production overlay's commands start a working cluster as plain
// processes. kustomize renders deploy/kubernetes/overlays/production; each
// pod becomes a network namespace on one bridge whose /etc/hosts is the
// cluster's DNS (the coordinators' peer names, the Services switchyard,
// etcd and nats); each process is the pod's container command with its
// rendered arguments and environment ($(VAR) expanded, the downward API
// filled in), binding 0.0.0.0 as written, its volumes temporary
// directories and its Secrets one test CA's certificates. Three
// coordinators find each other by their DNS names, two workers run from
// the ConfigMap's worker.yaml, a job succeeds; SIGTERM of the leader hands
// leadership to another replica (the time is logged and bounded), and
// SIGTERM of a worker that holds a rank drains it: it stops taking work
// (/readyz 503), waits for its job's next checkpoint, exits by itself,
// deregisters, and the job finishes on the other worker.
//
// It needs root and iproute2 (`ip netns`, veth, bridge); without them it
// fails, saying so.
func TestKubernetesProductionAsProcesses(t *testing.T) {
	k := startKube(t, "production", 2)
	c := k.c

	// the three replicas formed one cluster by their DNS names
	var st *apiv1.ClusterStatusResponse
	eventually(t, 60*time.Second, "3 voters and a leader", func() error {
		r := c.cli("cluster", "status", "-o", "json")
		if r.code != 0 {
			return fmt.Errorf("exit %d: %s", r.code, r.stderr)
		}
		var s apiv1.ClusterStatusResponse
		decode(t, r, &s)
		st = &s
		voters := 0
		for _, rep := range s.Replicas {
			if rep.Voter {
				voters++
			}
		}
		if voters != 3 || s.LeaderId == "" || !slices.Contains(c.coordIDs, s.LeaderId) {
			return fmt.Errorf("%d voters, leader %q: %v", voters, s.LeaderId, s.Replicas)
		}
		return nil
	})
	for _, rep := range st.Replicas {
		want := fmt.Sprintf("%s.switchyard-coordinator.%s.svc:7401", rep.Id, k.namespace)
		if rep.RaftAddress != want {
			t.Errorf("replica %s: raft address %q, want its DNS name %s", rep.Id, rep.RaftAddress, want)
		}
	}
	for _, p := range k.coords {
		eventually(t, 30*time.Second, p.name+" /readyz", func() error { return k.readyz(p, 7402, true, http.StatusOK) })
	}
	t.Logf("cluster of %v by DNS names, leader %s", c.coordIDs, st.LeaderId)

	// the workers from the ConfigMap's config register; a job succeeds
	eventually(t, 60*time.Second, "both workers registered", func() error {
		s := c.status()
		var ok []string
		for _, w := range s.Workers {
			if w.Healthy && w.Slots == 8 {
				ok = append(ok, w.Id)
			}
		}
		if len(ok) != len(k.workers) {
			return fmt.Errorf("healthy 8-slot workers %v, want %v", ok, slices.Sorted(maps.Keys(k.workers)))
		}
		return nil
	})
	first := c.submit("first", jobSpec("first", 20, 0, 0))
	c.waitJob(first, 120*time.Second, "SUCCEEDED", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))

	// SIGTERM of the leader hands leadership over
	old := c.leader()
	survivors := slices.DeleteFunc(slices.Clone(k.coords), func(p *kubePod) bool { return p.name == c.coordIDs[old] })
	clients := map[string]*client.Client{}
	for _, p := range survivors {
		cl, err := client.Dial(client.Options{Endpoints: []string{p.ip + ":7400"}, Token: k.token, TLS: k.clientTLS, ServerName: p.dnsName})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = cl.ClusterStatus(ctx, &apiv1.ClusterStatusRequest{}) // connected before the signal
		cancel()
		if err != nil {
			t.Fatalf("%s: cluster status: %v", p.name, err)
		}
		clients[p.name] = cl
	}
	leader := k.coords[old]
	t0 := time.Now()
	leader.proc.signal(syscall.SIGTERM)
	var newLeader string
	var handover time.Duration
	for newLeader == "" {
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("no replica reports itself leader 30 s after SIGTERM of %s", leader.name)
		}
		for name, cl := range clients {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			s, err := cl.ClusterStatus(ctx, &apiv1.ClusterStatusRequest{})
			cancel()
			if err == nil && s.LeaderId == name && s.AnsweredBy == name {
				newLeader, handover = name, time.Since(t0)
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("SIGTERM of leader %s: %s reports itself leader %v later", leader.name, newLeader, handover.Round(time.Millisecond))
	if handover > 2*time.Second {
		t.Errorf("leadership handed over in %v, want < 2 s", handover)
	}
	select {
	case <-leader.proc.done:
	case <-time.After(30 * time.Second): // terminationGracePeriodSeconds
		t.Fatalf("%s still runs 30 s after SIGTERM", leader.name)
	}
	if leader.proc.err != nil {
		t.Errorf("%s after SIGTERM: %v", leader.name, leader.proc.err)
	}

	// SIGTERM of a worker that holds a rank drains it; the job goes on
	// on the other worker (the cluster works after the handover too).
	// Steps run at about 125 a second here: 3000 leave the second attempt
	// most of them (with 400 the drain's checkpoint was once the job's
	// last, and the "second attempt" had no step to run)
	id := c.submit("drain", jobSpec("drain", 3000, 2, 20))
	j := c.waitJob(id, 120*time.Second, "past step 15 with a checkpoint", func(j *pb.Job) bool {
		return pastStep(15)(j) && eventTime(j, "CheckpointCommitted", 0) != 0
	})
	c.mustBeRunning(j, "the worker's SIGTERM")
	node := placedOn(j)[0]
	t.Logf("job %s at step %d on %v; SIGTERM to %s", id, j.Progress.GetStep(), placedOn(j), node)
	w := k.workers[node]
	tSig := time.Now()
	w.proc.signal(syscall.SIGTERM)
	saw503 := false
	for !saw503 && !w.proc.exited() && time.Since(tSig) < 10*time.Second {
		saw503 = k.readyz(w, 7090, false, http.StatusServiceUnavailable) == nil
		time.Sleep(10 * time.Millisecond)
	}
	if !saw503 {
		t.Errorf("%s: /readyz never answered 503 while draining", node)
	}
	drain := time.Duration(k.drainSeconds) * time.Second
	select {
	case <-w.proc.done:
	case <-time.After(drain + 15*time.Second):
		t.Fatalf("%s still runs %v after SIGTERM (drain_seconds %d)", node, drain+15*time.Second, k.drainSeconds)
	}
	took, exited := time.Since(tSig), time.Now()
	if w.proc.err != nil {
		t.Errorf("%s after SIGTERM: %v", node, w.proc.err)
	}
	j = c.job(id).Job
	committed := eventTime(j, "CheckpointCommitted", tSig.UnixNano())
	if committed == 0 {
		t.Errorf("no checkpoint committed after the SIGTERM of %s: %v", node, j.Events)
	} else if committed > exited.UnixNano() {
		t.Errorf("%s exited before the checkpoint it waited for was committed", node)
	} else {
		t.Logf("SIGTERM of %s: checkpoint committed %v later; exited by itself %v later", node,
			time.Duration(committed-tSig.UnixNano()).Round(time.Millisecond), took.Round(time.Millisecond))
	}
	eventually(t, 30*time.Second, node+" deregistered", func() error {
		for _, w := range c.status().Workers {
			if w.Id == node {
				return fmt.Errorf("%s still registered (healthy %v)", node, w.Healthy)
			}
		}
		return nil
	})
	j = c.waitJob(id, 180*time.Second, "SUCCEEDED after the drain", stateIs(pb.JobState_JOB_STATE_SUCCEEDED))
	t.Logf("job %s: SUCCEEDED after %d attempts, the last on %v", id, ranAttempts(j), placedOn(j))
	if ranAttempts(j) < 2 || slices.Contains(placedOn(j), node) {
		t.Errorf("job %s: %d attempts, last on %v; want a second attempt without %s", id, ranAttempts(j), placedOn(j), node)
	}
}

// kube is the rendered overlay running as processes in network namespaces.
type kube struct {
	t            *testing.T
	c            *cluster // the CLI's view: coordinator ids, job helpers
	objs         *manifests.Objects
	net          *podNet
	namespace    string
	token        string
	cert         security.PEM
	clientTLS    security.TLSFiles
	shared       string // the checkpoint volume
	coords       []*kubePod
	workers      map[string]*kubePod // by node name (the worker id)
	drainSeconds int
}

// kubePod is one pod: a network namespace with its address and names.
type kubePod struct {
	name    string // the pod's name
	dnsName string // its name in the cluster DNS ("" : none)
	netns   string
	ip      string
	dir     string // its volumes
	proc    *proc
}

// startKube renders overlay and starts etcd, NATS, the coordinator
// replicas and nWorkers workers, each in its own network namespace.
func startKube(t *testing.T, overlay string, nWorkers int) *kube {
	t.Helper()
	o, err := manifests.Load(filepath.Join("..", "deploy", "kubernetes", "overlays", overlay))
	if err != nil {
		t.Fatal(err)
	}
	coordSet, etcdSet, natsSet := o.StatefulSets["switchyard-coordinator"], o.StatefulSets["etcd"], o.StatefulSets["nats"]
	ds := o.DaemonSets["switchyard-worker"]
	var cm *corev1.ConfigMap // the generator names it with its content's hash
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil {
			cm = o.ConfigMaps[v.ConfigMap.Name]
		}
	}
	if coordSet == nil || etcdSet == nil || natsSet == nil || ds == nil || cm == nil || o.Namespace == "" {
		t.Fatalf("overlay %s: want the coordinator, etcd and nats StatefulSets, the worker DaemonSet and ConfigMap, a Namespace", overlay)
	}
	dir := t.TempDir()
	k := &kube{t: t, objs: o, namespace: o.Namespace, token: randomHex(t, 16), shared: filepath.Join(dir, "checkpoints"), workers: map[string]*kubePod{}}
	if err := os.MkdirAll(k.shared, 0o755); err != nil {
		t.Fatal(err)
	}
	k.net = newPodNet(t)
	ns := o.Namespace
	svc := func(name string) []string {
		return []string{name, name + "." + ns + ".svc", name + "." + ns + ".svc.cluster.local"}
	}
	replicas := int(ptrOr(coordSet.Spec.Replicas, 1))
	for i := range replicas {
		name := fmt.Sprintf("%s-%d", coordSet.Name, i)
		dns := fmt.Sprintf("%s.%s.%s.svc", name, coordSet.Spec.ServiceName, ns)
		p := k.net.addPod(name, dns, append([]string{dns, name + "." + coordSet.Spec.ServiceName}, svc("switchyard")...)...)
		k.coords = append(k.coords, p)
	}
	etcdPod := k.net.addPod("etcd-0", "etcd-0.etcd."+ns+".svc", append([]string{"etcd-0.etcd." + ns + ".svc"}, svc("etcd")...)...)
	natsPod := k.net.addPod("nats-0", "nats-0.nats."+ns+".svc", append([]string{"nats-0.nats." + ns + ".svc"}, svc("nats")...)...)
	for i := range nWorkers {
		node := fmt.Sprintf("node-%d", i+1)
		p := k.net.addPod(fmt.Sprintf("%s-%s", ds.Name, randomHex(t, 3)[:5]), "", node)
		k.workers[node] = p
	}
	cli := k.net.addPod("switchyard-cli", "", "switchyard-cli")
	k.net.writeHosts()

	// one CA for every Secret (as the README asks); one certificate naming
	// every Service, replica and pod address (the ranks' data plane dials
	// the addresses the workers advertise: their pod IPs)
	hosts := []string{"localhost", "127.0.0.1"}
	hosts = append(hosts, svc("switchyard")...)
	hosts = append(hosts, svc("etcd")...)
	hosts = append(hosts, svc("nats")...)
	hosts = append(hosts, etcdPod.dnsName, natsPod.dnsName)
	for _, p := range k.net.pods {
		hosts = append(hosts, p.ip)
		if p.dnsName != "" {
			hosts = append(hosts, p.dnsName)
		}
	}
	if k.cert, err = security.EphemeralPEM(hosts...); err != nil {
		t.Fatal(err)
	}
	k.clientTLS = k.writeSecret(filepath.Join(cli.dir, "tls"))
	k.c = &cluster{t: t, root: t, dir: dir, token: k.token, netns: cli.netns, cliEnv: []string{
		"SWITCHYARD_TOKEN=" + k.token, "SWITCHYARD_COORDINATOR=switchyard:7400",
		"SWITCHYARD_TLS_CA=" + k.clientTLS.CA, "SWITCHYARD_TLS_CERT=" + k.clientTLS.Cert, "SWITCHYARD_TLS_KEY=" + k.clientTLS.Key,
	}}

	// etcd and NATS: their rendered commands, one member each (the others'
	// names are in their cluster flags: one etcd member of three, NATS
	// without routes, so that neither waits for a quorum)
	etcdEnv := func(env map[string]string) {
		env["INITIAL_CLUSTER"] = strings.Split(env["INITIAL_CLUSTER"], ",")[0]
	}
	k.startPod(etcdPod, &etcdSet.Spec.Template.Spec, etcdSet.Spec.VolumeClaimTemplates, nil, etcdEnv, nil, bins.etcd)
	noRoutes := func(a string) bool {
		return strings.HasPrefix(a, "--routes") || strings.HasPrefix(a, "--cluster=") || strings.HasPrefix(a, "--cluster_name")
	}
	k.startPod(natsPod, &natsSet.Spec.Template.Spec, natsSet.Spec.VolumeClaimTemplates, nil, nil, noRoutes, bins.nats)
	waitTCP(t, etcdPod.ip+":2379", 30*time.Second)
	waitTCP(t, natsPod.ip+":4222", 30*time.Second)

	for _, p := range k.coords {
		k.c.coordIDs = append(k.c.coordIDs, p.name)
		k.startPod(p, &coordSet.Spec.Template.Spec, coordSet.Spec.VolumeClaimTemplates, nil, nil, nil, bins.coordinator)
	}
	raw, ok := cm.Data["worker.yaml"]
	if !ok {
		t.Fatal("ConfigMap switchyard-worker has no worker.yaml")
	}
	wc, err := workerconfig.Parse([]byte(raw))
	if err != nil {
		t.Fatalf("worker.yaml: %v", err)
	}
	k.drainSeconds = wc.DrainSeconds
	for _, node := range slices.Sorted(maps.Keys(k.workers)) {
		k.startPod(k.workers[node], &ds.Spec.Template.Spec, nil, map[string]string{"spec.nodeName": node}, nil, nil, bins.worker)
	}
	// the processes go first, at once, then the namespaces (t.Cleanup
	// runs last-registered first)
	t.Cleanup(func() {
		for _, p := range k.net.pods {
			if p.proc != nil && !p.proc.exited() {
				syscall.Kill(-p.proc.cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck
			}
		}
	})
	return k
}

// startPod runs the pod's first container: its command (bin stands for
// the image's), its arguments with $(VAR) expanded from the environment
// the kubelet would give it (fields: the downward API of this pod, edit:
// changes to it; drop: arguments left out), its volumes as directories.
func (k *kube) startPod(p *kubePod, spec *corev1.PodSpec, claims []corev1.PersistentVolumeClaim, fields map[string]string, edit func(map[string]string), drop func(string) bool, bin string) {
	t := k.t
	t.Helper()
	c := &spec.Containers[0]
	f := map[string]string{"metadata.name": p.name, "metadata.namespace": k.namespace, "status.podIP": p.ip, "spec.nodeName": "node-of-" + p.name}
	maps.Copy(f, fields)
	env := k.podEnv(c, f)
	if edit != nil {
		edit(env)
	}
	// volumes: the checkpoint claim is shared, Secrets hold the test CA's
	// certificate, ConfigMaps their files; everything else (claim
	// templates, emptyDir) is the pod's own directory
	mounts := map[string]string{} // mount path -> directory
	files := map[string]string{}  // directory/file -> ConfigMap content
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(p.dir, m.Name)
		i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		switch {
		case i >= 0 && spec.Volumes[i].PersistentVolumeClaim != nil:
			dir = k.shared
		case i >= 0 && spec.Volumes[i].Secret != nil:
			k.writeSecret(dir)
		case i >= 0 && spec.Volumes[i].ConfigMap != nil:
			cm := k.objs.ConfigMaps[spec.Volumes[i].ConfigMap.Name]
			if cm == nil {
				t.Fatalf("%s: no ConfigMap %s", p.name, spec.Volumes[i].ConfigMap.Name)
			}
			for name, body := range cm.Data {
				files[filepath.Join(dir, name)] = body
			}
		case i >= 0 && spec.Volumes[i].EmptyDir != nil:
		case slices.ContainsFunc(claims, func(cl corev1.PersistentVolumeClaim) bool { return cl.Name == m.Name }):
		default:
			t.Fatalf("%s: volume %s is not simulated", p.name, m.Name)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		mounts[m.MountPath] = dir
	}
	var pairs []string // longest first; one pass (a directory may hold a mount path, /tmp)
	for _, m := range slices.SortedFunc(maps.Keys(mounts), func(a, b string) int { return len(b) - len(a) }) {
		pairs = append(pairs, m, mounts[m])
	}
	local := strings.NewReplacer(pairs...).Replace
	for path, body := range files {
		if err := os.WriteFile(path, []byte(local(body)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var args []string
	for _, a := range c.Args {
		a = manifests.Expand(a, env)
		if strings.Contains(a, "$(") {
			t.Fatalf("%s: %q refers to an undefined variable", p.name, a)
		}
		if drop == nil || !drop(a) {
			args = append(args, local(a))
		}
	}
	var envList []string
	for _, name := range slices.Sorted(maps.Keys(env)) {
		envList = append(envList, name+"="+local(env[name]))
	}
	p.proc = start(t, p.name, envList, "ip", append([]string{"netns", "exec", p.netns, bin}, args...)...)
}

// writeSecret writes the test CA's certificate as a TLS Secret's files.
func (k *kube) writeSecret(dir string) security.TLSFiles {
	k.t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		k.t.Fatal(err)
	}
	f := security.TLSFiles{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key")}
	for path, body := range map[string][]byte{f.CA: k.cert.CA, f.Cert: k.cert.Cert, f.Key: k.cert.Key} {
		if err := os.WriteFile(path, body, 0o600); err != nil {
			k.t.Fatal(err)
		}
	}
	return f
}

// readyz asks pod's /readyz on port (over TLS against the test CA when
// tlsOn, without a client certificate) and wants status want.
func (k *kube) readyz(p *kubePod, port int, tlsOn bool, want int) error {
	scheme, tr := "http", &http.Transport{}
	if tlsOn {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(k.cert.CA)
		scheme, tr = "https", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: p.dnsName}}
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("%s://%s:%d/readyz", scheme, p.ip, port))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("%s /readyz: %d %s", p.name, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// podEnv is a container's environment as the kubelet sets it, with the
// token as the only Secret key.
func (k *kube) podEnv(c *corev1.Container, fields map[string]string) map[string]string {
	k.t.Helper()
	env, err := manifests.Env(c, manifests.Pod{Fields: fields, Secret: func(ref *corev1.SecretKeySelector) (string, bool) {
		return k.token, ref.Name == "switchyard-token"
	}})
	if err != nil {
		k.t.Fatal(err)
	}
	return env
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// podNet is the pods' network: a bridge in this namespace and one network
// namespace a pod, joined to it by a veth pair; each namespace's
// /etc/hosts (/etc/netns/NAME/hosts, which `ip netns exec` mounts there)
// maps the pods' and the Services' names to their addresses.
type podNet struct {
	t      *testing.T
	prefix string // of every name this run creates
	subnet string // "10.77.N."
	bridge string
	pods   []*kubePod
	hosts  map[string][]string // address -> names
}

func newPodNet(t *testing.T) *podNet {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("this test runs pods in network namespaces: it needs iproute2 (`ip`) and root: %v", err)
	}
	suffix := randomHex(t, 3)
	n := &podNet{t: t, prefix: "sy" + suffix[:4], hosts: map[string][]string{}}
	octet, _ := strconv.ParseUint(suffix[4:], 16, 8)
	n.subnet = fmt.Sprintf("10.77.%d.", octet)
	n.bridge = n.prefix + "br"
	n.ip("link", "add", n.bridge, "type", "bridge")
	t.Cleanup(func() { n.ipQuiet("link", "del", n.bridge) })
	n.ip("addr", "add", n.subnet+"1/24", "dev", n.bridge)
	n.ip("link", "set", n.bridge, "up")
	return n
}

// ip runs `ip args...`; a failure ends the test, naming what it needs.
func (n *podNet) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s (this test needs root, or CAP_NET_ADMIN and CAP_SYS_ADMIN, and iproute2)", strings.Join(args, " "), err, out)
	}
}

func (n *podNet) ipQuiet(args ...string) {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Logf("clean-up: ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// addPod makes a network namespace with the next address, named in the
// hosts file as names.
func (n *podNet) addPod(name, dnsName string, names ...string) *kubePod {
	n.t.Helper()
	i := len(n.pods)
	p := &kubePod{name: name, dnsName: dnsName, netns: fmt.Sprintf("%s-%s", n.prefix, name), ip: fmt.Sprintf("%s%d", n.subnet, 10+i), dir: filepath.Join(n.t.TempDir(), name)}
	host, peer := fmt.Sprintf("%sh%d", n.prefix, i), fmt.Sprintf("%sp%d", n.prefix, i)
	n.ip("netns", "add", p.netns)
	n.t.Cleanup(func() {
		n.ipQuiet("netns", "del", p.netns)
		os.RemoveAll(filepath.Join("/etc/netns", p.netns))
	})
	n.ip("link", "add", host, "type", "veth", "peer", "name", peer)
	n.ip("link", "set", host, "master", n.bridge, "up")
	n.ip("link", "set", peer, "netns", p.netns)
	n.ip("-n", p.netns, "link", "set", peer, "name", "eth0")
	n.ip("-n", p.netns, "addr", "add", p.ip+"/24", "dev", "eth0")
	n.ip("-n", p.netns, "link", "set", "eth0", "up")
	n.ip("-n", p.netns, "link", "set", "lo", "up")
	n.pods = append(n.pods, p)
	n.hosts[p.ip] = append(n.hosts[p.ip], names...)
	return p
}

// writeHosts writes every namespace's /etc/hosts and resolv.conf (a name
// not in the hosts file fails at once instead of waiting for a server).
func (n *podNet) writeHosts() {
	n.t.Helper()
	var common strings.Builder
	for _, p := range n.pods {
		if names := n.hosts[p.ip]; len(names) > 0 {
			fmt.Fprintf(&common, "%s\t%s\n", p.ip, strings.Join(names, " "))
		}
	}
	for _, p := range n.pods {
		dir := filepath.Join("/etc/netns", p.netns)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			n.t.Fatalf("%v (this test needs root)", err)
		}
		hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost\n%s\t%s\n%s", p.ip, p.name, common.String())
		if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(hosts), 0o644); err != nil {
			n.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
			n.t.Fatal(err)
		}
	}
}
