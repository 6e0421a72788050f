package deploy_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	mcscrd "sigs.k8s.io/mcs-api/config/crd"

	"github.com/straitnet/strait/discovery/kubepolicy"
	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/siteconf"
)

const namespace = "strait-system"

// doc is one YAML document of the manifests.
type doc struct {
	file string
	n    int // its place in the file, from 1
	obj  *unstructured.Unstructured
	raw  []byte // as JSON
}

func (d doc) String() string {
	name := d.obj.GetName()
	if ns := d.obj.GetNamespace(); ns != "" {
		name = ns + "/" + name
	}
	return fmt.Sprintf("%s %s (%s, document %d)", d.obj.GetKind(), name, d.file, d.n)
}

// manifests are the documents of crds/*.yaml, then of *.yaml, in the
// order `kubectl apply -f crds/ -f strait.yaml` applies them.
func manifests(t *testing.T) []doc {
	t.Helper()
	var files []string
	for _, pattern := range []string{"crds/*.yaml", "*.yaml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(m)
		files = append(files, m...)
	}
	if len(files) < 5 {
		t.Fatalf("manifests: only %v", files)
	}
	var docs []doc
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for n := 1; ; n++ {
			y, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", file, n, err)
			}
			j, err := utilyaml.ToJSON(y)
			if err != nil {
				t.Fatalf("%s: document %d is not YAML: %v", file, n, err)
			}
			if s := strings.TrimSpace(string(j)); s == "null" || s == "" {
				continue // comments only
			}
			obj := &unstructured.Unstructured{}
			if err := obj.UnmarshalJSON(j); err != nil {
				t.Fatalf("%s: document %d: %v", file, n, err)
			}
			if obj.GetName() == "" {
				t.Fatalf("%s: document %d (%s) has no name", file, n, obj.GetKind())
			}
			docs = append(docs, doc{file: file, n: n, obj: obj, raw: j})
		}
	}
	return docs
}

// find is the document of that kind and name; it fails the test if
// there is not exactly one.
func find(t *testing.T, docs []doc, kind, name string) doc {
	t.Helper()
	var found []doc
	for _, d := range docs {
		if d.obj.GetKind() == kind && d.obj.GetName() == name {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d documents are %s %s, want 1", len(found), kind, name)
	}
	return found[0]
}

// typed converts a document into its Go type.
func typed[T any](t *testing.T, d doc) *T {
	t.Helper()
	v := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(d.obj.Object, v, true); err != nil {
		t.Fatalf("%s: %v", d, err)
	}
	return v
}

// TestCRDCopies keeps crds/ byte for byte equal to the CRDs the code
// embeds, and complete: strait's own (discovery/kubepolicy) and the MCS
// API's, as released with the sigs.k8s.io/mcs-api in go.mod.
func TestCRDCopies(t *testing.T) {
	t.Parallel()
	want := map[string][]byte{
		"multicluster.x-k8s.io_serviceexports.yaml": mcscrd.ServiceExportCRD,
		"multicluster.x-k8s.io_serviceimports.yaml": mcscrd.ServiceImportCRD,
	}
	embedded, err := fs.Glob(kubepolicy.CRDs, "crds/*.yaml")
	if err != nil || len(embedded) == 0 {
		t.Fatalf("kubepolicy's embedded CRDs: %v, %v", embedded, err)
	}
	for _, f := range embedded {
		data, err := kubepolicy.CRDs.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want[filepath.Base(f)] = data
	}
	have, err := filepath.Glob("crds/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range have {
		if _, ok := want[filepath.Base(f)]; !ok {
			t.Errorf("%s is not a CRD the code embeds", f)
		}
	}
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join("crds", name))
		if err != nil {
			t.Errorf("crds/%s: %v (copy it from the code's)", name, err)
			continue
		}
		if !bytes.Equal(got, data) {
			t.Errorf("crds/%s differs from the CRD the code embeds: copy it again", name)
		}
	}
}

// TestManifests checks what needs no API server: the objects' places, no
// wildcard or secret in the RBAC, the names the Role allows are those the
// Deployment uses, and the example configuration parses.
func TestManifests(t *testing.T) {
	t.Parallel()
	docs := manifests(t)
	clusterScoped := map[string]bool{"Namespace": true, "CustomResourceDefinition": true, "ClusterRole": true, "ClusterRoleBinding": true}
	seen := map[string]bool{}
	for _, d := range docs {
		// Strictly into its Go type, where client-go has it (all but the
		// CRDs, which the API server test checks).
		if obj, err := scheme.Scheme.New(d.obj.GroupVersionKind()); err == nil {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(d.obj.Object, obj, true); err != nil {
				t.Errorf("%s: %v", d, err)
			}
		} else if d.obj.GetKind() != "CustomResourceDefinition" {
			t.Errorf("%s: an unknown kind: %v", d, err)
		}
		key := d.obj.GetAPIVersion() + "/" + d.obj.GetKind() + "/" + d.obj.GetNamespace() + "/" + d.obj.GetName()
		if seen[key] {
			t.Errorf("%s: twice", d)
		}
		seen[key] = true
		switch ns := d.obj.GetNamespace(); {
		case clusterScoped[d.obj.GetKind()] && ns != "":
			t.Errorf("%s: cluster-scoped, but has namespace %q", d, ns)
		case !clusterScoped[d.obj.GetKind()] && ns != namespace:
			t.Errorf("%s: namespace %q, want %s", d, ns, namespace)
		}
	}
	if first := docs[0]; first.obj.GetKind() != "CustomResourceDefinition" {
		t.Errorf("the first document is %s, want the CRDs first", first)
	}
	if ns := find(t, docs, "Namespace", namespace); ns.file != "strait.yaml" || ns.n != 1 {
		t.Errorf("%s: want it first in strait.yaml", ns)
	}

	// RBAC: no wildcards, no secrets, no CRDs, no escalation.
	for _, d := range docs {
		var rules []rbacv1.PolicyRule
		switch d.obj.GetKind() {
		case "ClusterRole":
			rules = typed[rbacv1.ClusterRole](t, d).Rules
		case "Role":
			rules = typed[rbacv1.Role](t, d).Rules
		default:
			continue
		}
		for i, r := range rules {
			all := slices.Concat(r.Verbs, r.APIGroups, r.Resources, r.ResourceNames, r.NonResourceURLs)
			if slices.Contains(all, "*") {
				t.Errorf("%s: rule %d has a wildcard: %+v", d, i, r)
			}
			for _, bad := range []string{"secrets", "customresourcedefinitions", "roles", "clusterroles", "rolebindings", "clusterrolebindings", "serviceaccounts", "pods/exec"} {
				if slices.Contains(r.Resources, bad) {
					t.Errorf("%s: rule %d grants %s: %+v", d, i, bad, r)
				}
			}
			for _, bad := range []string{"escalate", "bind", "impersonate", "deletecollection"} {
				if slices.Contains(r.Verbs, bad) {
					t.Errorf("%s: rule %d grants %s: %+v", d, i, bad, r)
				}
			}
		}
	}

	// The Deployment leads by election and keeps allocations in the
	// ConfigMap the Role lets it write, under the Lease it lets it hold.
	dep := typed[appsv1.Deployment](t, find(t, docs, "Deployment", "strait-gateway"))
	env := containerEnv(t, dep.Spec.Template.Spec, "gateway")
	for k, want := range map[string]string{"STRAIT_LEADER_ELECT": "true", "STRAIT_ALLOCATIONS": "kubernetes"} {
		if env[k] != want {
			t.Errorf("Deployment strait-gateway: %s=%q, want %q", k, env[k], want)
		}
	}
	if r := dep.Spec.Replicas; r == nil || *r < 2 {
		t.Errorf("Deployment strait-gateway: replicas %v, want 2 for a standby", r)
	}
	role := typed[rbacv1.Role](t, find(t, docs, "Role", "strait-gateway"))
	for _, want := range []struct{ resource, name string }{
		{"configmaps", env["STRAIT_ALLOCATIONS_CONFIGMAP"]},
		{"leases", env["STRAIT_LEADER_ELECT_LEASE"]},
	} {
		if want.name == "" {
			t.Errorf("Deployment strait-gateway: no name for its %s (STRAIT_ALLOCATIONS_CONFIGMAP, STRAIT_LEADER_ELECT_LEASE)", want.resource)
			continue
		}
		if !slices.ContainsFunc(role.Rules, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.Resources, want.resource) && slices.Contains(r.ResourceNames, want.name) && slices.Contains(r.Verbs, "update")
		}) {
			t.Errorf("Role strait-gateway does not let the gateway update %s %s", want.resource, want.name)
		}
	}

	// The example configuration: the site file as it is, the mesh file
	// once its placeholders are filled, and the site is in it.
	cm := typed[corev1.ConfigMap](t, find(t, docs, "ConfigMap", "strait-gateway"))
	if _, err := siteconf.Parse("site.yaml", []byte(cm.Data["site.yaml"])); err != nil {
		t.Errorf("ConfigMap strait-gateway: site.yaml: %v", err)
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	mesh := strings.NewReplacer(
		"<strait ca init prints it>", randomKey(t),
		"<strait ca gossip-key>", randomKey(t),
		"<strait-gateway keygen prints it>", key.PublicKey().String(),
	).Replace(cm.Data["mesh.yaml"])
	m, err := meshconf.Parse("mesh.yaml", []byte(mesh))
	if err != nil {
		t.Fatalf("ConfigMap strait-gateway: mesh.yaml with its placeholders filled: %v", err)
	}
	site := cm.Data["site"]
	if !slices.ContainsFunc(m.Sites, func(s meshconf.Site) bool { return s.Name == site }) {
		t.Errorf("ConfigMap strait-gateway: site %q is not in mesh.yaml", site)
	}
	if m.Discovery == nil || !strings.HasPrefix(m.Discovery.Identity, "/etc/strait/keys/") {
		t.Errorf("ConfigMap strait-gateway: the identity is not read from the Secret's mount")
	}
}

func randomKey(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// containerEnv is a container's literal environment; variables from
// references read as "<ref>".
func containerEnv(t *testing.T, spec corev1.PodSpec, name string) map[string]string {
	t.Helper()
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		if c.Name != name {
			continue
		}
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
			if e.ValueFrom != nil {
				env[e.Name] = "<ref>"
			}
		}
		return env
	}
	t.Fatalf("no container %s", name)
	return nil
}
