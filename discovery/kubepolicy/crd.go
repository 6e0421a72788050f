package kubepolicy

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// The API group and version of strait's own resources.
const (
	Group   = "strait.io"
	Version = "v1alpha1"
)

// The kinds, as the objects' "kind" says, and as problems and conflict
// keys name them.
const (
	KindGlobalService  = "GlobalService"
	KindFirewallPolicy = "FirewallPolicy"
)

// The resources the source watches.
var (
	GlobalServices   = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "globalservices"}
	FirewallPolicies = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "firewallpolicies"}
)

// CRDs holds the CustomResourceDefinitions, one YAML file per resource:
// what InstallCRDs applies, and what deploy manifests copy.
//
//go:embed crds/*.yaml
var CRDs embed.FS

// crdFiles are the files of CRDs, in the order InstallCRDs applies them.
var crdFiles = []string{"crds/strait.io_globalservices.yaml", "crds/strait.io_firewallpolicies.yaml"}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs applies the GlobalService and FirewallPolicy
// CustomResourceDefinitions and waits until the API server serves them
// (Established), or ctx ends.
//
// It goes through the dynamic client and server-side apply, with field
// manager "strait", as kubesource.InstallCRDs does: apply makes a second
// install a no-op, and an install of a newer strait updates them.
func InstallCRDs(ctx context.Context, cfg *rest.Config) error {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubepolicy: dynamic client: %w", err)
	}
	crds := client.Resource(crdResource)
	var names []string
	for _, file := range crdFiles {
		obj, data, err := loadCRD(file)
		if err != nil {
			return err
		}
		force := true
		if _, err := crds.Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: "strait", Force: &force}); err != nil {
			return fmt.Errorf("kubepolicy: applying CRD %s: %w", obj.GetName(), err)
		}
		names = append(names, obj.GetName())
	}
	for _, name := range names {
		var last error
		err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			crd, err := crds.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				last = err
				return false, nil // the server may be catching up; keep trying until ctx ends
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, ok := c.(map[string]any)
				if !ok || m["type"] != "Established" {
					continue
				}
				if m["status"] == "True" {
					return true, nil
				}
				last = fmt.Errorf("not Established: %v", m["message"])
				return false, nil
			}
			last = errors.New("not Established yet")
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("kubepolicy: waiting for CRD %s: %w (last: %v)", name, err, last)
		}
	}
	return nil
}

// loadCRD reads an embedded CRD as an object and as the JSON to apply.
func loadCRD(file string) (*unstructured.Unstructured, []byte, error) {
	doc, err := CRDs.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("kubepolicy: embedded CRD %s: %w", file, err)
	}
	data, err := utilyaml.ToJSON(doc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubepolicy: embedded CRD %s is not YAML: %w", file, err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		return nil, nil, fmt.Errorf("kubepolicy: embedded CRD %s: %w", file, err)
	}
	return obj, data, nil
}
