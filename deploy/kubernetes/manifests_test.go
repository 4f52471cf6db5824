// Package kubernetes_test checks the Kubernetes manifests without a
// cluster: each overlay is rendered with the kustomize Go API, every
// object decodes strictly into its k8s.io/api type, and the objects are
// cross-checked against each other and against the binaries (their own
// flag parsers, through --check-config), the worker config's validation
// and the job spec parser.
package kubernetes_test

import (
	"bytes"
	"debug/elf"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/switchyard-ml/switchyard/deploy/kubernetes/manifests"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
)

var overlays = []string{"dev", "production"}

// objects is one rendered overlay, by kind and name.
type objects = manifests.Objects

// workload is a pod template with where it comes from.
type workload struct {
	kind, name string
	replicas   int // -1: one a node (DaemonSet)
	selector   *metav1.LabelSelector
	pod        *corev1.PodTemplateSpec
}

func workloads(o *objects) []workload {
	var out []workload
	for _, n := range slices.Sorted(maps.Keys(o.StatefulSets)) {
		s := o.StatefulSets[n]
		out = append(out, workload{"StatefulSet", n, int(ptrOr(s.Spec.Replicas, 1)), s.Spec.Selector, &s.Spec.Template})
	}
	for _, n := range slices.Sorted(maps.Keys(o.Deployments)) {
		d := o.Deployments[n]
		out = append(out, workload{"Deployment", n, int(ptrOr(d.Spec.Replicas, 1)), d.Spec.Selector, &d.Spec.Template})
	}
	for _, n := range slices.Sorted(maps.Keys(o.DaemonSets)) {
		d := o.DaemonSets[n]
		out = append(out, workload{"DaemonSet", n, -1, d.Spec.Selector, &d.Spec.Template})
	}
	return out
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// The decoder the checks rely on refuses what Kubernetes would: a
// misspelt field anywhere, an unknown kind, a value of the wrong type.
func TestStrictDecodingRefuses(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"misspelt top-level field", "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\nspec: {replicaz: 3}\n", "replicaz"},
		{"misspelt nested field", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports:\n  - {name: api, port: 1, targetPort: api, protocl: TCP}\n", "protocl"},
		{"misspelt container field", "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers:\n      - {name: c, image: i, readinesProbe: {}}\n", "readinesProbe"},
		{"wrong type", "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\nspec: {replicas: three}\n", "replicas"},
		{"unknown kind", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n", "unexpected kind"},
		{"kind at the wrong version", "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata: {name: x}\n", "unexpected kind"},
		{"repeated key", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n", "data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := manifests.Decode([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decode: %v, want an error naming %q", err, tc.want)
			}
		})
	}
	if _, err := manifests.Decode([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")); err != nil {
		t.Fatalf("a good document: %v", err)
	}
}

var (
	renderOnce sync.Map // overlay -> *objects
)

func overlay(t *testing.T, name string) *objects {
	t.Helper()
	if o, ok := renderOnce.Load(name); ok {
		return o.(*objects)
	}
	o, err := manifests.Load(filepath.Join("overlays", name))
	if err != nil {
		t.Fatalf("overlay %s: %v", name, err)
	}
	renderOnce.Store(name, o)
	return o
}

// Every overlay renders, decodes strictly, and names its namespace.
func TestOverlaysDecodeStrictly(t *testing.T) {
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			o := overlay(t, name)
			if o.Namespace == "" {
				t.Error("no Namespace object")
			}
			for _, want := range []string{"switchyard-coordinator", "etcd", "nats"} {
				if o.StatefulSets[want] == nil {
					t.Errorf("no StatefulSet %s", want)
				}
			}
			if o.DaemonSets["switchyard-worker"] == nil {
				t.Error("no worker DaemonSet")
			}
		})
	}
}

// podsOf are the workloads whose pods sel selects.
func podsOf(o *objects, sel labels.Selector) []workload {
	var out []workload
	for _, w := range workloads(o) {
		if sel.Matches(labels.Set(w.pod.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

func selector(t *testing.T, ls *metav1.LabelSelector) labels.Selector {
	t.Helper()
	if ls == nil {
		t.Fatal("nil selector")
	}
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// portOf finds a container port of the pod by name or number.
func portOf(pod *corev1.PodSpec, p intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, c := range pod.Containers {
		for _, cp := range c.Ports {
			if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
				return cp, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

// Selectors select the pods they are meant for, and the ports they name
// are declared there.
func TestSelectorsAndPorts(t *testing.T) {
	// Service, PodDisruptionBudget and NetworkPolicy names → the workload
	// they are for (by default the one of the same name).
	meantFor := map[string]string{"switchyard": "switchyard-coordinator"}
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			o := overlay(t, name)
			for _, w := range workloads(o) {
				if !selector(t, w.selector).Matches(labels.Set(w.pod.Labels)) {
					t.Errorf("%s %s: selector %v does not match its pod labels %v", w.kind, w.name, w.selector, w.pod.Labels)
				}
				if got := podsOf(o, selector(t, w.selector)); len(got) != 1 {
					t.Errorf("%s %s: its selector matches %d workloads' pods", w.kind, w.name, len(got))
				}
			}
			for _, s := range o.StatefulSets {
				if svc := o.Services[s.Spec.ServiceName]; svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
					t.Errorf("StatefulSet %s: serviceName %q is not a headless Service here", s.Name, s.Spec.ServiceName)
				}
			}
			target := func(kind, name string) workload {
				want := name
				if m, ok := meantFor[name]; ok {
					want = m
				}
				for _, w := range workloads(o) {
					if w.name == want {
						return w
					}
				}
				t.Fatalf("%s %s: no workload %s for it", kind, name, want)
				return workload{}
			}
			for _, svc := range o.Services {
				w := target("Service", svc.Name)
				sel := labels.SelectorFromSet(svc.Spec.Selector)
				if len(svc.Spec.Selector) == 0 || !sel.Matches(labels.Set(w.pod.Labels)) || len(podsOf(o, sel)) != 1 {
					t.Errorf("Service %s: selector %v does not select exactly %s's pods", svc.Name, svc.Spec.Selector, w.name)
				}
				for _, p := range svc.Spec.Ports {
					if _, ok := portOf(&w.pod.Spec, p.TargetPort); !ok {
						t.Errorf("Service %s port %s: targetPort %s is not a port of %s", svc.Name, p.Name, p.TargetPort.String(), w.name)
					}
				}
			}
			for _, pdb := range o.PDBs {
				w := target("PodDisruptionBudget", pdb.Name)
				if !selector(t, pdb.Spec.Selector).Matches(labels.Set(w.pod.Labels)) || len(podsOf(o, selector(t, pdb.Spec.Selector))) != 1 {
					t.Errorf("PodDisruptionBudget %s: selector does not select exactly %s's pods", pdb.Name, w.name)
				}
			}
			for _, np := range o.NetPols {
				sel := selector(t, &np.Spec.PodSelector)
				selected := podsOf(o, sel)
				if np.Name == "default-deny-ingress" {
					if len(selected) != len(workloads(o)) || len(np.Spec.Ingress) != 0 {
						t.Errorf("NetworkPolicy %s: selects %d of %d workloads, %d rules", np.Name, len(selected), len(workloads(o)), len(np.Spec.Ingress))
					}
					continue
				}
				w := target("NetworkPolicy", np.Name)
				if len(selected) != 1 || selected[0].name != w.name {
					t.Errorf("NetworkPolicy %s: selects %v, want %s's pods only", np.Name, names(selected), w.name)
				}
				for i, rule := range np.Spec.Ingress {
					for _, peer := range rule.From {
						if peer.PodSelector == nil {
							continue
						}
						if _, client := peer.PodSelector.MatchLabels["switchyard.io/client"]; client {
							continue // the operator's clients: no workload of ours
						}
						if len(podsOf(o, selector(t, peer.PodSelector))) == 0 {
							t.Errorf("NetworkPolicy %s rule %d: from %v selects no pod", np.Name, i, peer.PodSelector.MatchLabels)
						}
					}
					for _, p := range rule.Ports {
						if p.Port == nil {
							t.Errorf("NetworkPolicy %s rule %d: a rule without a port", np.Name, i)
							continue
						}
						cp, ok := portOf(&w.pod.Spec, *p.Port)
						if !ok {
							t.Errorf("NetworkPolicy %s rule %d: port %s is not a port of %s", np.Name, i, p.Port.String(), w.name)
						}
						if p.EndPort != nil && (*p.EndPort < cp.ContainerPort || p.Port.Type != intstr.Int) {
							t.Errorf("NetworkPolicy %s rule %d: bad range %s-%d", np.Name, i, p.Port.String(), *p.EndPort)
						}
					}
				}
			}
			// every pod's ports are open to someone: each declared port of
			// a workload other than its probes' is in one of its policies
			for _, w := range workloads(o) {
				np := o.NetPols[w.name]
				if np == nil {
					t.Errorf("%s %s: no NetworkPolicy of its own (the default denies all ingress)", w.kind, w.name)
					continue
				}
				for _, c := range w.pod.Spec.Containers {
					for _, cp := range c.Ports {
						if !allowedBy(np, cp) {
							t.Errorf("%s %s: port %s (%d) is declared but no rule of NetworkPolicy %s lets anything reach it", w.kind, w.name, cp.Name, cp.ContainerPort, np.Name)
						}
					}
				}
			}
		})
	}
}

func allowedBy(np *networkingv1.NetworkPolicy, cp corev1.ContainerPort) bool {
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			switch {
			case p.Port == nil:
			case p.Port.Type == intstr.String && p.Port.StrVal == cp.Name:
				return true
			case p.Port.Type == intstr.Int && p.Port.IntVal == cp.ContainerPort:
				return true
			case p.Port.Type == intstr.Int && p.EndPort != nil && p.Port.IntVal <= cp.ContainerPort && cp.ContainerPort <= *p.EndPort:
				return true
			}
		}
	}
	return false
}

func names(ws []workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.name)
	}
	return out
}

// probePaths are the paths each container's probes may ask for: the
// endpoints its program serves.
var probePaths = map[string][]string{
	"coordinator": {"/healthz", "/readyz"},
	"worker":      {"/healthz", "/readyz"},
	"etcd":        {"/livez", "/readyz", "/health"},
	"nats":        {"/healthz"},
}

// Every container has resource requests, a pinned image, probes on a
// declared port and a path its program serves, and its volumes, Secrets,
// ConfigMaps and claims exist (Secrets: named in the README).
func TestContainers(t *testing.T) {
	readme, err := os.ReadFile("README.md") // the Secrets to create are listed there
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			o := overlay(t, name)
			for _, w := range workloads(o) {
				spec := &w.pod.Spec
				if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
					t.Errorf("%s: mounts a service account token it has no use for", w.name)
				}
				if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
					t.Errorf("%s: not runAsNonRoot", w.name)
				}
				vols := map[string]corev1.Volume{}
				for _, v := range spec.Volumes {
					vols[v.Name] = v
					switch {
					case v.ConfigMap != nil && o.ConfigMaps[v.ConfigMap.Name] == nil:
						t.Errorf("%s: volume %s: no ConfigMap %s", w.name, v.Name, v.ConfigMap.Name)
					case v.PersistentVolumeClaim != nil && o.PVCs[v.PersistentVolumeClaim.ClaimName] == nil:
						t.Errorf("%s: volume %s: no PersistentVolumeClaim %s", w.name, v.Name, v.PersistentVolumeClaim.ClaimName)
					case v.Secret != nil && !secretDocumented(readme, v.Secret.SecretName):
						t.Errorf("%s: volume %s: Secret %s is not in README.md's list", w.name, v.Name, v.Secret.SecretName)
					}
				}
				if s, ok := o.StatefulSets[w.name]; ok {
					for _, c := range s.Spec.VolumeClaimTemplates {
						vols[c.Name] = corev1.Volume{Name: c.Name}
					}
				}
				for _, c := range spec.Containers {
					where := w.name + "/" + c.Name
					if !regexp.MustCompile(`^[a-z0-9./-]+(:[0-9]+)?/?[a-z0-9._/-]*:[A-Za-z0-9._-]+$`).MatchString(c.Image) || strings.HasSuffix(c.Image, ":latest") {
						t.Errorf("%s: image %q is not pinned by a tag", where, c.Image)
					}
					if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
						t.Errorf("%s: wants cpu and memory requests and a memory limit: %v", where, c.Resources)
					}
					if sc := c.SecurityContext; sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
						t.Errorf("%s: wants allowPrivilegeEscalation false and a read-only root", where)
					}
					for _, m := range c.VolumeMounts {
						if _, ok := vols[m.Name]; !ok {
							t.Errorf("%s: mounts %s, which is no volume of the pod", where, m.Name)
						}
					}
					for _, e := range c.Env {
						if r := e.ValueFrom; r != nil && r.SecretKeyRef != nil && !secretDocumented(readme, r.SecretKeyRef.Name) {
							t.Errorf("%s: env %s: Secret %s is not in README.md's list", where, e.Name, r.SecretKeyRef.Name)
						}
					}
					paths, known := probePaths[c.Name]
					if !known {
						t.Errorf("%s: no probe paths known for container %s", where, c.Name)
					}
					probes := map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe}
					if c.LivenessProbe == nil {
						t.Errorf("%s: no liveness probe", where)
					}
					for _, kind := range slices.Sorted(maps.Keys(probes)) {
						p := probes[kind]
						if p == nil {
							continue
						}
						if p.HTTPGet == nil {
							t.Errorf("%s: %s probe is not an HTTP GET", where, kind)
							continue
						}
						if _, ok := portOf(&corev1.PodSpec{Containers: []corev1.Container{c}}, p.HTTPGet.Port); !ok {
							t.Errorf("%s: %s probe on port %s, which the container does not declare", where, kind, p.HTTPGet.Port.String())
						}
						if !slices.Contains(paths, p.HTTPGet.Path) {
							t.Errorf("%s: %s probe asks for %s; %s serves %v", where, kind, p.HTTPGet.Path, c.Name, paths)
						}
					}
				}
			}
		})
	}
}

func secretDocumented(readme []byte, name string) bool {
	return bytes.Contains(readme, []byte("`"+name+"`"))
}

// binaries builds coordinator and worker (and switchyard: the image's
// third binary) once, statically as the Dockerfile does.
var binaries = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "switchyard-k8s-bin-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "../../cmd/coordinator", "../../cmd/worker", "../../cmd/switchyard")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	return dir, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := binaries(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// podEnv is a container's environment as the kubelet would set it in a
// pod named podName on node "gpu-node-1" with IP 10.0.3.17: downward-API
// values, Secrets as placeholders, $(VAR) references expanded.
func podEnv(t *testing.T, o *objects, c *corev1.Container, podName string) map[string]string {
	t.Helper()
	env, err := manifests.Env(c, manifests.Pod{
		Fields: map[string]string{"metadata.name": podName, "metadata.namespace": o.Namespace, "spec.nodeName": "gpu-node-1", "status.podIP": "10.0.3.17"},
		Secret: func(ref *corev1.SecretKeySelector) (string, bool) { return "from-secret-" + ref.Name, true },
	})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// flagValue is the value of --name=v or --name v in args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

func portNumber(t *testing.T, hostPort string) int32 {
	t.Helper()
	i := strings.LastIndexByte(hostPort, ':')
	n, err := strconv.Atoi(hostPort[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("%q: no port", hostPort)
	}
	return int32(n)
}

func wantPort(t *testing.T, c *corev1.Container, name string, port int32) {
	t.Helper()
	cp, ok := portOf(&corev1.PodSpec{Containers: []corev1.Container{*c}}, intstr.FromInt32(port))
	if !ok || name != "" && cp.Name != name {
		t.Errorf("%s: listens on %d (%s) but declares %v", c.Name, port, name, c.Ports)
	}
}

// The coordinators' command lines pass their own parser and checks
// (coordinator --check-config), once for each replica's pod name; the
// flags' ports are the declared ones; --peers names every replica by its
// DNS name, and nothing else.
func TestCoordinatorCommandLine(t *testing.T) {
	bin, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			o := overlay(t, name)
			s := o.StatefulSets["switchyard-coordinator"]
			c := &s.Spec.Template.Spec.Containers[0]
			if c.Name != "coordinator" || len(c.Command) != 1 || c.Command[0] != "/usr/local/bin/coordinator" {
				t.Fatalf("container %s runs %v", c.Name, c.Command)
			}
			replicas := int(ptrOr(s.Spec.Replicas, 1))
			for ord := range replicas {
				pod := fmt.Sprintf("%s-%d", s.Name, ord)
				env := podEnv(t, o, c, pod)
				var args []string
				for _, a := range c.Args {
					a = manifests.Expand(a, env)
					if strings.Contains(a, "$(") {
						t.Errorf("%s: %q refers to an undefined variable", pod, a)
					}
					args = append(args, a)
				}
				cmd := exec.Command(filepath.Join(bin, "coordinator"), append(args, "--check-config")...)
				for k, v := range env {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				if err := cmd.Run(); err != nil {
					t.Fatalf("%s: coordinator %s --check-config: %v\n%s", pod, strings.Join(args, " "), err, stderr.String())
				}
				t.Logf("%s: %s", pod, strings.TrimSpace(stdout.String()))
				if !strings.Contains(stdout.String(), "replica "+pod+",") {
					t.Errorf("%s: %s", pod, stdout.String())
				}
				if name == "production" && !strings.Contains(stdout.String(), "tls mutual, raft too") {
					t.Errorf("%s: production without TLS: %s", pod, stdout.String())
				}

				for flagName, portName := range map[string]string{"api-addr": "api", "raft-addr": "raft", "http-addr": "http", "metrics-addr": "metrics"} {
					v, ok := flagValue(args, flagName)
					if !ok {
						t.Errorf("%s: no --%s", pod, flagName)
						continue
					}
					wantPort(t, c, portName, portNumber(t, v))
				}
				adv, _ := flagValue(args, "raft-advertise")
				svc := o.Services[s.Spec.ServiceName]
				if want := fmt.Sprintf("%s.%s.%s.svc:", pod, svc.Name, o.Namespace); !strings.HasPrefix(adv, want) {
					t.Errorf("%s: --raft-advertise %q, want its DNS name %s...", pod, adv, want)
				}
				peers, _ := flagValue(args, "peers")
				var want []string
				for i := range replicas {
					p := fmt.Sprintf("%s-%d", s.Name, i)
					want = append(want, fmt.Sprintf("%s=%s.%s.%s.svc:%d", p, p, svc.Name, o.Namespace, portNumber(t, adv)))
				}
				if peers != strings.Join(want, ",") {
					t.Errorf("%s: --peers %q\nwant %q (every replica, by its DNS name)", pod, peers, strings.Join(want, ","))
				}
				if _, ok := flagValue(append(args, ""), "bootstrap"); !ok {
					t.Errorf("%s: without --bootstrap", pod)
				}
			}
		})
	}
}

// The workers' command line and their ConfigMap's worker.yaml, with the
// environment the DaemonSet sets, pass worker --check-config and
// workerconfig's validation; the ports they listen on are declared; a GPU
// worker offers exactly the GPUs it requests, one slot each.
func TestWorkerCommandLine(t *testing.T) {
	bin, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			o := overlay(t, name)
			d := o.DaemonSets["switchyard-worker"]
			spec := &d.Spec.Template.Spec
			c := &spec.Containers[0]
			if c.Name != "worker" || len(c.Command) != 1 || c.Command[0] != "/usr/local/bin/worker" {
				t.Fatalf("container %s runs %v", c.Name, c.Command)
			}
			if len(spec.NodeSelector) == 0 {
				t.Error("no nodeSelector: a worker would run on every node")
			}
			env := podEnv(t, o, c, d.Name+"-x7k2p")
			// the ConfigMap volumes, written where the pod mounts them
			root := t.TempDir()
			var args []string
			for _, a := range c.Args {
				args = append(args, manifests.Expand(a, env))
			}
			for _, m := range c.VolumeMounts {
				for _, v := range spec.Volumes {
					if v.Name != m.Name || v.ConfigMap == nil {
						continue
					}
					dir := filepath.Join(root, m.Name)
					if err := os.MkdirAll(dir, 0o755); err != nil {
						t.Fatal(err)
					}
					for file, body := range o.ConfigMaps[v.ConfigMap.Name].Data {
						if err := os.WriteFile(filepath.Join(dir, file), []byte(body), 0o644); err != nil {
							t.Fatal(err)
						}
					}
					for i := range args {
						args[i] = strings.ReplaceAll(args[i], m.MountPath+"/", dir+"/")
					}
				}
			}
			cmd := exec.Command(filepath.Join(bin, "worker"), append(args, "--check-config")...)
			for k, v := range env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("worker %s --check-config: %v\n%s", strings.Join(args, " "), err, stderr.String())
			}
			t.Logf("%s", strings.TrimSpace(stdout.String()))

			// the same config in this process, for its values
			path, ok := flagValue(args, "config")
			if !ok || len(args) != 1 {
				t.Fatalf("worker args %q: want --config only (the rest is in the file and the environment)", args)
			}
			cfg, err := workerconfig.LoadForCheck(path, nil, func(k string) string { return env[k] }, workerconfig.Detector{})
			if err != nil {
				t.Fatalf("worker.yaml with the DaemonSet's environment: %v", err)
			}
			if cfg.ID != "gpu-node-1" || cfg.Host != "gpu-node-1" || !strings.HasPrefix(cfg.AdvertiseAddress, "10.0.3.17:") {
				t.Errorf("id %q, host %q, advertise %q: want the node's name and the pod's IP", cfg.ID, cfg.Host, cfg.AdvertiseAddress)
			}
			listen := portNumber(t, cfg.ListenAddress)
			if portNumber(t, cfg.AdvertiseAddress) != listen {
				t.Errorf("advertise %s and listen %s differ in port", cfg.AdvertiseAddress, cfg.ListenAddress)
			}
			for k := range int32(cfg.SlotCount()) {
				wantPort(t, c, "", listen+k)
			}
			wantPort(t, c, "metrics", portNumber(t, cfg.MetricsAddress))
			if got := c.Resources.Limits.Cpu().Value(); int64(cfg.Resources.CPUCores) != got {
				t.Errorf("offers %d cores, its limit is %d", cfg.Resources.CPUCores, got)
			}
			if got := c.Resources.Limits.Memory().Value() >> 20; cfg.Resources.MemoryMiB != got {
				t.Errorf("offers %d MiB, its limit is %d MiB", cfg.Resources.MemoryMiB, got)
			}
			gpus := c.Resources.Limits[corev1.ResourceName("nvidia.com/gpu")]
			if int64(cfg.Resources.GPUs) != gpus.Value() {
				t.Errorf("offers %d GPUs, its limit is %d", cfg.Resources.GPUs, gpus.Value())
			}
			if name == "production" {
				if gpus.Value() < 1 || !cfg.TLS.Enabled() || cfg.Insecure || !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
					t.Errorf("production worker: %d GPUs, TLS %v, insecure %v, hostNetwork %v, dnsPolicy %s", gpus.Value(), cfg.TLS.Enabled(), cfg.Insecure, spec.HostNetwork, spec.DNSPolicy)
				}
				for _, p := range []string{cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key} {
					if !mounted(spec, c, filepath.Dir(p)) {
						t.Errorf("TLS file %s is on no Secret volume of the pod", p)
					}
				}
			}
			// the drain on SIGTERM (drain_seconds, then 10 s for the ranks to
			// stop) ends before the kubelet's SIGKILL
			if grace := ptrOr(spec.TerminationGracePeriodSeconds, 30); cfg.DrainSeconds < 1 || int64(cfg.DrainSeconds)+15 > grace {
				t.Errorf("drain_seconds %d and terminationGracePeriodSeconds %d: the drain must fit in the grace period with 15 s to spare", cfg.DrainSeconds, grace)
			}
			if !mounted(spec, c, cfg.StoragePath) || !strings.HasPrefix(cfg.StoragePath, "/mnt/checkpoints") {
				t.Errorf("storage_path %s is not the shared checkpoint volume", cfg.StoragePath)
			}
		})
	}
}

// mounted reports whether dir is a volume mount of c (a Secret's, for the
// TLS directories; any for others).
func mounted(spec *corev1.PodSpec, c *corev1.Container, dir string) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath == dir {
			return true
		}
	}
	return false
}

// Production keeps quorum: three coordinators (and etcd members and NATS
// servers) on different nodes, at most one unavailable by choice; etcd's
// initial cluster and NATS's routes name every member.
func TestProductionQuorum(t *testing.T) {
	o := overlay(t, "production")
	for _, name := range []string{"switchyard-coordinator", "etcd", "nats"} {
		s := o.StatefulSets[name]
		if got := ptrOr(s.Spec.Replicas, 1); got != 3 {
			t.Errorf("%s: %d replicas, want 3", name, got)
		}
		if s.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
			t.Errorf("%s: pods start in order; a new cluster's members must start together", name)
		}
		pdb := o.PDBs[name]
		if pdb == nil || pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
			t.Errorf("%s: want a PodDisruptionBudget with maxUnavailable 1", name)
		}
		aff := s.Spec.Template.Spec.Affinity
		ok := false
		if aff != nil && aff.PodAntiAffinity != nil {
			for _, term := range aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
				ok = ok || term.TopologyKey == "kubernetes.io/hostname" && selector(t, term.LabelSelector).Matches(labels.Set(s.Spec.Template.Labels))
			}
		}
		if !ok {
			t.Errorf("%s: no required pod anti-affinity across nodes", name)
		}
	}
	env := podEnv(t, o, &o.StatefulSets["etcd"].Spec.Template.Spec.Containers[0], "etcd-0")
	if got := strings.Count(env["INITIAL_CLUSTER"], "="); got != 3 {
		t.Errorf("etcd's initial cluster names %d members: %s", got, env["INITIAL_CLUSTER"])
	}
	routes, _ := flagValue(o.StatefulSets["nats"].Spec.Template.Spec.Containers[0].Args, "routes")
	if got := len(strings.Split(routes, ",")); got != 3 {
		t.Errorf("NATS routes name %d servers: %s", got, routes)
	}
	if got := ptrOr(o.StatefulSets["switchyard-coordinator"].Spec.Replicas, 1); got != 3 {
		t.Fatal(got)
	}
	if dev := overlay(t, "dev"); ptrOr(dev.StatefulSets["switchyard-coordinator"].Spec.Replicas, 1) != 1 {
		t.Errorf("dev: want one coordinator")
	}
}

// Every example in deploy/examples passes its parser: job specs
// jobspec.Parse, experiments jobspec.ParseExperiment, worker configs
// workerconfig's (their TLS files need not exist here).
func TestDeployExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(raw) == 0 {
				t.Fatal("empty")
			}
			switch base := filepath.Base(f); {
			case strings.HasPrefix(base, "worker"):
				// as the worker would load it, without GPUs to detect or
				// the TLS files here
				host := func() (string, error) { return "example-host", nil }
				if _, err := workerconfig.LoadForCheck(f, nil, nil, workerconfig.Detector{Hostname: host}); err != nil {
					t.Fatal(err)
				}
			case strings.HasPrefix(base, "experiment"):
				if _, err := jobspec.ParseExperiment(raw); err != nil {
					t.Fatal(err)
				}
			default:
				if _, err := jobspec.Parse(raw); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// The image's binaries: the coordinator is fully static; worker and
// switchyard load the CUDA driver at run time through purego, which makes
// them import libc's loader and nothing else (the base image has glibc).
func TestStaticBuild(t *testing.T) {
	bin, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	allowed := []string{"libc.so.6", "libdl.so.2", "libpthread.so.0"}
	for _, name := range []string{"coordinator", "worker", "switchyard"} {
		f, err := elf.Open(filepath.Join(bin, name))
		if err != nil {
			t.Fatal(err)
		}
		libs, err := f.ImportedLibraries()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range libs {
			if !slices.Contains(allowed, l) {
				t.Errorf("%s needs %s at run time; the image has only %v", name, l, allowed)
			}
		}
		if name == "coordinator" && len(libs) > 0 {
			t.Errorf("coordinator is not static: %v", libs)
		}
	}
}

// The Dockerfile builds the three binaries with CGO_ENABLED=0 in a Go
// builder stage and copies them into a non-root runtime stage, and make
// image builds it.
func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	type stage struct {
		from, name string
		lines      []string
	}
	var stages []*stage
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if strings.EqualFold(f[0], "FROM") {
			s := &stage{from: f[1]}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				s.name = f[3]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if !strings.EqualFold(f[0], "ARG") {
				t.Fatalf("%q before the first FROM", line)
			}
			continue
		}
		stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, line)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a builder and a runtime stage", len(stages))
	}
	build := stages[0]
	body := strings.Join(build.lines, "\n")
	if !strings.HasPrefix(build.from, "golang:1.26") || !strings.Contains(body, "CGO_ENABLED=0") {
		t.Errorf("builder stage %s: want golang:1.26 and CGO_ENABLED=0", build.from)
	}
	for _, cmd := range []string{"./cmd/switchyard", "./cmd/coordinator", "./cmd/worker"} {
		if !strings.Contains(body, cmd) {
			t.Errorf("builder stage does not build %s", cmd)
		}
	}
	for _, s := range stages[1:] {
		body := strings.Join(s.lines, "\n")
		for _, b := range []string{"switchyard", "coordinator", "worker"} {
			if !regexp.MustCompile(`(?m)^COPY --from=` + build.name + ` .*/` + b + `\b.*/usr/local/bin/`).MatchString(body) {
				t.Errorf("stage %s does not copy %s into /usr/local/bin", s.name, b)
			}
		}
		user := regexp.MustCompile(`(?m)^USER (\S+)`).FindAllStringSubmatch(body, -1)
		if len(user) == 0 || slices.Contains([]string{"root", "0", "0:0"}, user[len(user)-1][1]) {
			t.Errorf("stage %s runs as root (USER %v)", s.name, user)
		}
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^image:`).Match(mk) || !regexp.MustCompile(`(?m)^IMAGE \?= switchyard:dev$`).Match(mk) || !bytes.Contains(mk, []byte("-f deploy/Dockerfile")) {
		t.Error("Makefile: want IMAGE ?= switchyard:dev and an image target building deploy/Dockerfile")
	}
}
