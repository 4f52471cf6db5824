// Package manifests renders the Kubernetes overlays of deploy/kubernetes
// with the kustomize Go API, decodes what they hold strictly into their
// k8s.io/api types, and computes a container's environment as the kubelet
// would. It serves the checks that need no cluster (deploy/kubernetes's
// tests) and the end-to-end test that runs the rendered commands as
// processes (e2e); the product itself never reads the manifests.
package manifests

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Objects is one rendered overlay, by kind and name.
type Objects struct {
	Namespace    string
	StatefulSets map[string]*appsv1.StatefulSet
	DaemonSets   map[string]*appsv1.DaemonSet
	Deployments  map[string]*appsv1.Deployment
	Services     map[string]*corev1.Service
	ConfigMaps   map[string]*corev1.ConfigMap
	PVCs         map[string]*corev1.PersistentVolumeClaim
	NetPols      map[string]*networkingv1.NetworkPolicy
	PDBs         map[string]*policyv1.PodDisruptionBudget
}

// Render runs kustomize on the overlay directory dir, as `kustomize
// build` does, and returns the multi-document YAML stream.
func Render(dir string) ([]byte, error) {
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("manifests: kustomize build %s: %w", dir, err)
	}
	return rm.AsYaml()
}

// Load renders dir and decodes the result (Render, then Decode).
func Load(dir string) (*Objects, error) {
	stream, err := Render(dir)
	if err != nil {
		return nil, err
	}
	return Decode(stream)
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// Decode decodes a multi-document stream strictly: every document must be
// a kind listed in Objects, every field one its type has, and every
// object named.
func Decode(stream []byte) (*Objects, error) {
	o := &Objects{
		StatefulSets: map[string]*appsv1.StatefulSet{}, DaemonSets: map[string]*appsv1.DaemonSet{},
		Deployments: map[string]*appsv1.Deployment{}, Services: map[string]*corev1.Service{},
		ConfigMaps: map[string]*corev1.ConfigMap{}, PVCs: map[string]*corev1.PersistentVolumeClaim{},
		NetPols: map[string]*networkingv1.NetworkPolicy{}, PDBs: map[string]*policyv1.PodDisruptionBudget{},
	}
	for i, doc := range docSep.Split(string(stream), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("manifests: document %d: %v", i, err)
		}
		var (
			obj  any
			meta *metav1.ObjectMeta
			put  func()
		)
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 StatefulSet":
			v := &appsv1.StatefulSet{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.StatefulSets[v.Name] = v }
		case "apps/v1 DaemonSet":
			v := &appsv1.DaemonSet{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.DaemonSets[v.Name] = v }
		case "apps/v1 Deployment":
			v := &appsv1.Deployment{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.Deployments[v.Name] = v }
		case "v1 Service":
			v := &corev1.Service{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.Services[v.Name] = v }
		case "v1 ConfigMap":
			v := &corev1.ConfigMap{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.ConfigMaps[v.Name] = v }
		case "v1 PersistentVolumeClaim":
			v := &corev1.PersistentVolumeClaim{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.PVCs[v.Name] = v }
		case "v1 Namespace":
			v := &corev1.Namespace{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.Namespace = v.Name }
		case "networking.k8s.io/v1 NetworkPolicy":
			v := &networkingv1.NetworkPolicy{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.NetPols[v.Name] = v }
		case "policy/v1 PodDisruptionBudget":
			v := &policyv1.PodDisruptionBudget{}
			obj, meta, put = v, &v.ObjectMeta, func() { o.PDBs[v.Name] = v }
		default:
			return nil, fmt.Errorf("manifests: document %d: unexpected kind %q %q", i, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("manifests: %s %s: %v", tm.Kind, docName(doc), err)
		}
		if meta.Name == "" {
			return nil, fmt.Errorf("manifests: document %d: %s without a name", i, tm.Kind)
		}
		put()
	}
	return o, nil
}

func docName(doc string) string {
	var m struct {
		Metadata struct{ Name string } `json:"metadata"`
	}
	_ = yaml.Unmarshal([]byte(doc), &m)
	return m.Metadata.Name
}

// Pod is what the kubelet fills a container's environment from: the
// downward API's fields (by field path: "metadata.name", "status.podIP",
// ...) and the Secrets' keys (nil: Secret references are refused).
type Pod struct {
	Fields map[string]string
	Secret func(ref *corev1.SecretKeySelector) (string, bool)
}

// Env is c's environment as the kubelet sets it in pod p: plain values
// with $(VAR) expanded from the variables before them, downward-API
// fields, resource limits (rounded up to the divisor, as the kubelet
// does) and Secret keys. A source p cannot fill is an error.
func Env(c *corev1.Container, p Pod) (map[string]string, error) {
	env := map[string]string{}
	for _, e := range c.Env {
		switch r := e.ValueFrom; {
		case r == nil:
			env[e.Name] = Expand(e.Value, env)
		case r.FieldRef != nil:
			v, ok := p.Fields[r.FieldRef.FieldPath]
			if !ok {
				return nil, fmt.Errorf("manifests: %s: env %s: field %s not given", c.Name, e.Name, r.FieldRef.FieldPath)
			}
			env[e.Name] = v
		case r.ResourceFieldRef != nil:
			q := c.Resources.Limits[corev1.ResourceName(strings.TrimPrefix(r.ResourceFieldRef.Resource, "limits."))]
			if q.IsZero() || r.ResourceFieldRef.ContainerName != c.Name {
				return nil, fmt.Errorf("manifests: %s: env %s: %s of container %q is not set", c.Name, e.Name, r.ResourceFieldRef.Resource, r.ResourceFieldRef.ContainerName)
			}
			div := r.ResourceFieldRef.Divisor
			if div.IsZero() {
				div = resource.MustParse("1")
			}
			env[e.Name] = strconv.FormatInt((q.MilliValue()+div.MilliValue()-1)/div.MilliValue(), 10)
		case r.SecretKeyRef != nil && p.Secret != nil:
			v, ok := p.Secret(r.SecretKeyRef)
			if !ok {
				return nil, fmt.Errorf("manifests: %s: env %s: Secret %s key %s not given", c.Name, e.Name, r.SecretKeyRef.Name, r.SecretKeyRef.Key)
			}
			env[e.Name] = v
		default:
			return nil, fmt.Errorf("manifests: %s: env %s: source not simulated", c.Name, e.Name)
		}
	}
	return env, nil
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// Expand replaces $(VAR) with VAR's value, as the kubelet does; an
// undefined VAR stays as written.
func Expand(s string, env map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := env[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}
