// Package kubecrd installs CustomResourceDefinitions the way strait's
// tests, the lab and its gateways' packages do: through the dynamic client
// and server-side apply (field manager "strait"), so that a second install
// is a no-op and a newer strait's updates them, then waiting until the API
// server serves them (Established). The typed apiextensions clientset is a
// module of its own that strait does not otherwise need.
package kubecrd

import (
	"context"
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

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Install applies the CRDs, YAML documents, in order, and waits until each
// is Established or ctx ends.
func Install(ctx context.Context, cfg *rest.Config, docs ...[]byte) error {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	crds := client.Resource(crdResource)
	var names []string
	for i, doc := range docs {
		data, err := utilyaml.ToJSON(doc)
		if err != nil {
			return fmt.Errorf("CRD %d is not YAML: %w", i, err)
		}
		var obj unstructured.Unstructured
		if err := obj.UnmarshalJSON(data); err != nil {
			return fmt.Errorf("CRD %d: %w", i, err)
		}
		force := true
		if _, err := crds.Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: "strait", Force: &force}); err != nil {
			return fmt.Errorf("applying CRD %s: %w", obj.GetName(), err)
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
			return fmt.Errorf("waiting for CRD %s: %w (last: %v)", name, err, last)
		}
	}
	return nil
}
