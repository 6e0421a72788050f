package lab

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
)

// DemoApp is the demo's app for cloud-b's cluster of the merger lab
// (demo/app.yaml): Service demo/app on port 80 in front of cloud-b-pod1,
// its EndpointSlice, and the ServiceExport that offers it to the mesh.
//
//go:embed demo/app.yaml
var DemoApp []byte

// DemoNamespace is the demo's namespace (demo/namespace.yaml), for the
// clusters that import demo/app: the MCS API makes a ServiceImport only
// in a cluster that has the service's namespace.
//
//go:embed demo/namespace.yaml
var DemoNamespace []byte

// FieldManager is who the lab's server-side applies write as.
const FieldManager = "strait-lab"

// kubeClient is what Apply and Get need of a site's cluster.
type kubeClient struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
	// reset forgets the cached discovery.
	reset func()
}

func (l *Lab) kubeClient(site string) (*kubeClient, error) {
	cfg, err := l.KubeConfig(site)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	cached := memory.NewMemCacheClient(dc)
	deferred := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	return &kubeClient{dyn: dyn, mapper: restmapper.NewShortcutExpander(deferred, cached, nil), reset: deferred.Reset}, nil
}

// mapping finds the resource of a kind, looking again once if the cached
// discovery does not know it (a CRD installed since).
func (k *kubeClient) mapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	m, err := k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		k.reset()
		m, err = k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	return m, err
}

func (k *kubeClient) resource(m *meta.RESTMapping, namespace string) dynamic.ResourceInterface {
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return k.dyn.Resource(m.Resource).Namespace(namespace)
	}
	return k.dyn.Resource(m.Resource)
}

// Apply creates or updates, in a site's cluster, the objects of a stream
// of YAML (or JSON) documents, the way `kubectl apply --server-side` does,
// in their order. It returns what it applied, as "service demo/app".
func (l *Lab) Apply(ctx context.Context, site string, data []byte) ([]string, error) {
	k, err := l.kubeClient(site)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var done []string
	for i := 1; ; i++ {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return done, nil
		} else if err != nil {
			return done, fmt.Errorf("lab: document %d: %w", i, err)
		}
		if len(obj.Object) == 0 {
			continue // an empty document
		}
		gvk := obj.GroupVersionKind()
		if gvk.Kind == "" || obj.GetName() == "" {
			return done, fmt.Errorf("lab: document %d has no kind or no name", i)
		}
		m, err := k.mapping(gvk)
		if err != nil {
			return done, fmt.Errorf("lab: document %d (%s %s): %w", i, gvk.Kind, obj.GetName(), err)
		}
		what := strings.ToLower(gvk.Kind) + " " + obj.GetName()
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			if obj.GetNamespace() == "" {
				obj.SetNamespace("default")
			}
			what = strings.ToLower(gvk.Kind) + " " + obj.GetNamespace() + "/" + obj.GetName()
		}
		body, err := obj.MarshalJSON()
		if err != nil {
			return done, err
		}
		if _, err := k.resource(m, obj.GetNamespace()).Patch(ctx, obj.GetName(), types.ApplyPatchType, body,
			metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true)}); err != nil {
			return done, fmt.Errorf("lab: apply %s in %s: %w", what, site, err)
		}
		done = append(done, what)
	}
}

// Get returns objects of a resource ("serviceimports", "svc") from a
// site's cluster: the one called name, or all of the namespace (of every
// namespace if namespace is empty) when name is empty.
func (l *Lab) Get(ctx context.Context, site, resource, namespace, name string) ([]unstructured.Unstructured, error) {
	k, err := l.kubeClient(site)
	if err != nil {
		return nil, err
	}
	gvr, err := k.mapper.ResourceFor(schema.GroupVersionResource{Resource: strings.ToLower(resource)})
	if meta.IsNoMatchError(err) {
		k.reset()
		gvr, err = k.mapper.ResourceFor(schema.GroupVersionResource{Resource: strings.ToLower(resource)})
	}
	if err != nil {
		return nil, fmt.Errorf("lab: resource %q in %s: %w", resource, site, err)
	}
	gvk, err := k.mapper.KindFor(gvr)
	if err != nil {
		return nil, err
	}
	m, err := k.mapping(gvk)
	if err != nil {
		return nil, err
	}
	ri := k.resource(m, namespace)
	if name != "" {
		if m.Scope.Name() == meta.RESTScopeNameNamespace && namespace == "" {
			ri = k.resource(m, "default")
		}
		o, err := ri.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return []unstructured.Unstructured{*o}, nil
	}
	list, err := ri.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}
