package kubepolicy

import (
	"context"
	"embed"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"

	"github.com/straitnet/strait/internal/kubecrd"
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
// (Established), or ctx ends (see package kubecrd).
func InstallCRDs(ctx context.Context, cfg *rest.Config) error {
	var docs [][]byte
	for _, file := range crdFiles {
		doc, err := CRDs.ReadFile(file)
		if err != nil {
			return fmt.Errorf("kubepolicy: embedded CRD %s: %w", file, err)
		}
		docs = append(docs, doc)
	}
	if err := kubecrd.Install(ctx, cfg, docs...); err != nil {
		return fmt.Errorf("kubepolicy: %w", err)
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
