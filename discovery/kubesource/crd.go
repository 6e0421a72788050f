package kubesource

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
	mcscrd "sigs.k8s.io/mcs-api/config/crd"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs applies the MCS API's CustomResourceDefinitions (ServiceExport
// and ServiceImport, as released with the mcs-api module strait builds
// with) and waits until the API server serves them, or ctx ends. It is for
// tests and the lab; a production cluster installs the CRDs with its
// manifests.
//
// It goes through the dynamic client and server-side apply: the typed
// apiextensions clientset is a module of its own that strait does not
// otherwise need, and apply makes a second install (a rerun, a lab that
// is up already) a no-op.
func InstallCRDs(ctx context.Context, cfg *rest.Config) error {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubesource: dynamic client: %w", err)
	}
	crds := client.Resource(crdResource)
	var names []string
	for _, doc := range [][]byte{mcscrd.ServiceExportCRD, mcscrd.ServiceImportCRD} {
		data, err := utilyaml.ToJSON(doc)
		if err != nil {
			return fmt.Errorf("kubesource: the embedded MCS CRD is not YAML: %w", err)
		}
		var obj unstructured.Unstructured
		if err := obj.UnmarshalJSON(data); err != nil {
			return fmt.Errorf("kubesource: the embedded MCS CRD: %w", err)
		}
		force := true
		if _, err := crds.Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: "strait", Force: &force}); err != nil {
			return fmt.Errorf("kubesource: applying CRD %s: %w", obj.GetName(), err)
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
				if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			last = errors.New("not Established yet")
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("kubesource: waiting for CRD %s: %w (last: %v)", name, err, last)
		}
	}
	return nil
}
