package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/cache"
	mcsv1a1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/straitnet/strait/discovery/kubepolicy"
	"github.com/straitnet/strait/discovery/kubesource"
	"github.com/straitnet/strait/e2e/kube/kubetest"
	"github.com/straitnet/strait/internal/kubecrd"
	"github.com/straitnet/strait/internal/leader"
	"github.com/straitnet/strait/natpool"
	"github.com/straitnet/strait/natpool/kubestore"
	"github.com/straitnet/strait/nodeagent"
)

const fieldManager = "strait-deploy-test"

// TestManifestsOnAPIServer is `kubectl apply --server-side --dry-run=server`
// of every manifest on a real kube-apiserver, with strict field
// validation, after the Namespace and the CRDs are made for real; each
// workload's pod template is also sent as a Pod (dry run), which runs the
// admission a pod meets (Pod Security, priority, service account). Then
// the RBAC objects are applied for real, and the gateway's and the agent's
// service accounts are checked for exactly the rules the code needs: their
// whole rule sets, allowed and denied requests, and the code's own calls
// made as them.
func TestManifestsOnAPIServer(t *testing.T) {
	t.Parallel()
	docs := manifests(t)
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := srv.Config()
	kc, err := kubernetes.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	// For real: the Namespace, then the CRDs, until Established.
	apply(ctx, t, dyn, mapper, find(t, docs, "Namespace", namespace), false)
	var crds [][]byte
	for _, d := range docs {
		if d.obj.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, d.raw)
		}
	}
	if err := kubecrd.Install(ctx, admin, crds...); err != nil {
		t.Fatalf("the CRDs of crds/: %v", err)
	}
	mapper.Reset()

	// Everything, as a server-side dry run.
	for _, d := range docs {
		apply(ctx, t, dyn, mapper, d, true)
	}
	// For real: the service accounts and RBAC, which the rest needs.
	for _, d := range docs {
		switch d.obj.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			apply(ctx, t, dyn, mapper, d, false)
		}
	}
	// The pods the workloads would make.
	dep := typed[appsv1.Deployment](t, find(t, docs, "Deployment", "strait-gateway"))
	ds := typed[appsv1.DaemonSet](t, find(t, docs, "DaemonSet", "strait-agent"))
	for _, tmpl := range []corev1.PodTemplateSpec{dep.Spec.Template, ds.Spec.Template} {
		pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
		pod.Name, pod.Namespace = tmpl.Labels["app.kubernetes.io/name"]+"-dry-run", namespace
		opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}
		if _, err := kc.CoreV1().Pods(namespace).Create(ctx, pod, opts); err != nil {
			t.Errorf("a pod of %s: %v", pod.Labels["app.kubernetes.io/name"], err)
		}
	}
	if t.Failed() {
		return
	}

	env := containerEnv(t, dep.Spec.Template.Spec, "gateway")
	allocations, lease := env["STRAIT_ALLOCATIONS_CONFIGMAP"], env["STRAIT_LEADER_ELECT_LEASE"]
	t.Run("gateway", func(t *testing.T) {
		checkGateway(ctx, t, srv.Config(), as(admin, dep.Spec.Template.Spec.ServiceAccountName), allocations, lease)
	})
	t.Run("agent", func(t *testing.T) {
		checkAgent(ctx, t, srv.Config(), as(admin, ds.Spec.Template.Spec.ServiceAccountName))
	})
}

// apply applies one document by server-side apply, with strict field
// validation; dryRun only has the server check it.
func apply(ctx context.Context, t *testing.T, dyn dynamic.Interface, mapper meta.ResettableRESTMapper, d doc, dryRun bool) {
	t.Helper()
	gvk := d.obj.GroupVersionKind()
	var mapping *meta.RESTMapping
	var err error
	for range 50 { // discovery may be a moment behind a new CRD
		if mapping, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err == nil || !meta.IsNoMatchError(err) {
			break
		}
		mapper.Reset()
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("%s: the API server does not serve %s: %v", d, gvk, err)
	}
	var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = dyn.Resource(mapping.Resource).Namespace(d.obj.GetNamespace())
	}
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: new(true), FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if _, err = ri.Patch(ctx, d.obj.GetName(), types.ApplyPatchType, d.raw, opts); err != nil {
		what := "refused"
		if dryRun {
			what = "refused in a dry run"
		}
		t.Errorf("%s: %s: %v", d, what, err)
	}
}

// as is a client configuration that impersonates a service account of
// strait-system, as its token would authenticate.
func as(admin *rest.Config, sa string) *rest.Config {
	cfg := rest.CopyConfig(admin)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + namespace + ":" + sa,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
	return cfg
}

// access is one request for a SelfSubjectAccessReview.
type access struct {
	verb, group, resource, sub, ns, name string
}

func (a access) String() string {
	r := a.resource
	if a.group != "" {
		r += "." + a.group
	}
	if a.sub != "" {
		r += "/" + a.sub
	}
	if a.name != "" {
		r += " " + a.name
	}
	if a.ns != "" {
		r += " in " + a.ns
	}
	return a.verb + " " + r
}

// checkAccess asks the server, as cfg's user, whether each is allowed.
func checkAccess(ctx context.Context, t *testing.T, cfg *rest.Config, allowed, denied []access) {
	t.Helper()
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		allowed bool
		list    []access
	}{{true, allowed}, {false, denied}} {
		for _, a := range want.list {
			r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
				Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.sub, Namespace: a.ns, Name: a.name,
				}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("%s: %v", a, err)
			}
			if r.Status.Allowed != want.allowed {
				t.Errorf("%s: allowed=%t, want %t (%s)", a, r.Status.Allowed, want.allowed, r.Status.Reason)
			}
		}
	}
}

// rules is the user's whole rule set in a namespace, one line per group,
// resource, verb and name, leaving out what every service account may do
// (review its own access, read public cluster information): the rules of
// one that nothing is bound to.
func rules(ctx context.Context, t *testing.T, cfg *rest.Config, ns string) []string {
	t.Helper()
	nobody := rest.CopyConfig(cfg)
	nobody.Impersonate.UserName = "system:serviceaccount:" + namespace + ":strait-test-nobody"
	base := userRules(ctx, t, nobody, ns)
	if len(base) == 0 {
		t.Fatal("a service account with no bindings may do nothing at all: the baseline is wrong")
	}
	return slices.DeleteFunc(userRules(ctx, t, cfg, ns), func(r string) bool { return slices.Contains(base, r) })
}

func userRules(ctx context.Context, t *testing.T, cfg *rest.Config, ns string) []string {
	t.Helper()
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx, &authorizationv1.SelfSubjectRulesReview{
		Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status.Incomplete {
		t.Fatalf("rules in %s: incomplete: %s", ns, r.Status.EvaluationError)
	}
	var out []string
	for _, rule := range r.Status.ResourceRules {
		names := rule.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				for _, v := range rule.Verbs {
					for _, n := range names {
						line := fmt.Sprintf("%s %s/%s", v, g, res)
						if n != "" {
							line += " " + n
						}
						out = append(out, line)
					}
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func expand(spec ...string) []string {
	// "verb,verb group/resource,resource [name]"
	var out []string
	for _, s := range spec {
		f := strings.Fields(s)
		gr := strings.SplitN(f[1], "/", 2)
		for _, v := range strings.Split(f[0], ",") {
			for _, r := range strings.Split(gr[1], ",") {
				line := fmt.Sprintf("%s %s/%s", v, gr[0], r)
				if len(f) > 2 {
					line += " " + f[2]
				}
				out = append(out, line)
			}
		}
	}
	slices.Sort(out)
	return out
}

func diffRules(t *testing.T, where string, got, want []string) {
	t.Helper()
	for _, g := range got {
		if !slices.Contains(want, g) {
			t.Errorf("%s: may %s, which the code does not need", where, g)
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s: may not %s, which the code needs", where, w)
		}
	}
}

func checkGateway(ctx context.Context, t *testing.T, admin, cfg *rest.Config, allocations, lease string) {
	// Its whole rule set: what discovery/kubesource, discovery/kubepolicy,
	// natpool/kubestore and internal/leader call, and no more.
	cluster := []string{
		"list,watch /services,namespaces",
		"list,watch discovery.k8s.io/endpointslices",
		"list,watch multicluster.x-k8s.io/serviceexports",
		"update multicluster.x-k8s.io/serviceexports/status",
		"list,watch,create,update,delete multicluster.x-k8s.io/serviceimports",
		"update multicluster.x-k8s.io/serviceimports/status",
		"list,watch strait.io/globalservices,firewallpolicies",
		"update strait.io/globalservices/status,firewallpolicies/status",
	}
	diffRules(t, "gateway, in default", rules(ctx, t, cfg, "default"), expand(cluster...))
	diffRules(t, "gateway, in "+namespace, rules(ctx, t, cfg, namespace), expand(append(cluster,
		"create /configmaps", "get,update /configmaps "+allocations,
		"create coordination.k8s.io/leases", "get,update coordination.k8s.io/leases "+lease)...))

	checkAccess(ctx, t, cfg, []access{
		{verb: "watch", group: "multicluster.x-k8s.io", resource: "serviceexports"},
		{verb: "update", group: "multicluster.x-k8s.io", resource: "serviceexports", sub: "status", ns: "shop", name: "db"},
		{verb: "create", group: "multicluster.x-k8s.io", resource: "serviceimports", ns: "shop"},
		{verb: "delete", group: "multicluster.x-k8s.io", resource: "serviceimports", ns: "shop", name: "db"},
		{verb: "list", group: "discovery.k8s.io", resource: "endpointslices"},
		{verb: "update", group: "strait.io", resource: "firewallpolicies", sub: "status", name: "p"},
		{verb: "get", resource: "configmaps", ns: namespace, name: allocations},
		{verb: "update", resource: "configmaps", ns: namespace, name: allocations},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: namespace, name: lease},
	}, []access{
		{verb: "get", resource: "secrets", ns: namespace},
		{verb: "list", resource: "secrets"},
		{verb: "get", resource: "configmaps", ns: namespace, name: "strait-gateway"},
		{verb: "get", resource: "configmaps", ns: "kube-system", name: allocations},
		{verb: "create", resource: "configmaps", ns: "default"},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: namespace, name: "kube-controller-manager"},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", ns: "kube-system", name: lease},
		{verb: "delete", resource: "nodes", name: "n1"},
		{verb: "patch", resource: "nodes", name: "n1"},
		{verb: "create", group: "apiextensions.k8s.io", resource: "customresourcedefinitions"},
		{verb: "update", group: "apiextensions.k8s.io", resource: "customresourcedefinitions", name: "serviceexports.multicluster.x-k8s.io"},
		{verb: "update", group: "multicluster.x-k8s.io", resource: "serviceexports", ns: "shop", name: "db"},
		{verb: "delete", group: "multicluster.x-k8s.io", resource: "serviceexports", ns: "shop", name: "db"},
		{verb: "update", group: "strait.io", resource: "globalservices", ns: "shop", name: "db"},
		{verb: "create", resource: "pods", ns: namespace},
		{verb: "update", resource: "services", ns: "shop", name: "db"},
	})

	// The code's own calls, made as the gateway.
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mc, err := mcsclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	adminKube, err := kubernetes.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	adminMCS, err := mcsclient.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	adminDyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)

	// Its informers sync: every list and watch is allowed.
	src, err := kubesource.New(kubesource.Options{Kube: kc, MCS: mc, Cluster: "cloud-a", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := kubepolicy.New(kubepolicy.Options{Dynamic: dyn, Cluster: "cloud-a", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- src.Run(runCtx) }()
	go func() { done <- pol.Run(runCtx) }()
	defer func() {
		stop()
		for range 2 {
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("a source's Run: %v", err)
			}
		}
	}()
	waitFor(t, 30*time.Second, "kubesource and kubepolicy to sync as the gateway", func() bool { return src.Synced() && pol.Synced() })

	// Its writes: ServiceExport status, ServiceImports and their status,
	// GlobalService status.
	if _, err := adminKube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	se, err := adminMCS.MulticlusterV1alpha1().ServiceExports("shop").Create(ctx, &mcsv1a1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: "db"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cond := metav1.Condition{Type: "Valid", Status: metav1.ConditionTrue, Reason: "Exported", Message: "test", LastTransitionTime: metav1.Now()}
	se.Status.Conditions = []metav1.Condition{cond}
	if _, err := mc.MulticlusterV1alpha1().ServiceExports("shop").UpdateStatus(ctx, se, metav1.UpdateOptions{}); err != nil {
		t.Errorf("the gateway sets a ServiceExport's conditions: %v", err)
	}
	se.Labels = map[string]string{"x": "y"}
	if _, err := mc.MulticlusterV1alpha1().ServiceExports("shop").Update(ctx, se, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the gateway changes a ServiceExport: %v, want forbidden", err)
	}
	sis := mc.MulticlusterV1alpha1().ServiceImports("shop")
	si, err := sis.Create(ctx, &mcsv1a1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{kubesource.LabelManagedBy: kubesource.ManagedBy}},
		Spec:       mcsv1a1.ServiceImportSpec{Type: mcsv1a1.ClusterSetIP, Ports: []mcsv1a1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the gateway creates a ServiceImport: %v", err)
	}
	si.Spec.Ports[0].Port = 8080
	if si, err = sis.Update(ctx, si, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("the gateway updates a ServiceImport: %v", err)
	}
	si.Status.Clusters = []mcsv1a1.ClusterStatus{{Cluster: "cloud-b"}}
	if si, err = sis.UpdateStatus(ctx, si, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("the gateway updates a ServiceImport's status: %v", err)
	}
	uid, rv := si.UID, si.ResourceVersion
	if err := sis.Delete(ctx, "web", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}}); err != nil {
		t.Errorf("the gateway deletes a ServiceImport: %v", err)
	}
	gs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": kubepolicy.Group + "/" + kubepolicy.Version, "kind": kubepolicy.KindGlobalService,
		"metadata": map[string]any{"name": "db", "namespace": "shop"}, "spec": map[string]any{},
	}}
	if gs, err = adminDyn.Resource(kubepolicy.GlobalServices).Namespace("shop").Create(ctx, gs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(gs.Object, "242.255.0.10", "status", "vip"); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(kubepolicy.GlobalServices).Namespace("shop").UpdateStatus(ctx, gs, metav1.UpdateOptions{}); err != nil {
		t.Errorf("the gateway sets a GlobalService's status: %v", err)
	}

	// Allocations in the ConfigMap the Deployment names: made, read back,
	// replaced.
	store := &kubestore.Store{Client: kc, Namespace: namespace, Name: allocations, Site: "cloud-a"}
	if _, err := store.Load(); err != nil {
		t.Fatalf("the gateway reads its allocations: %v", err)
	}
	for range 2 {
		if err := store.Save(natpool.State{}); err != nil {
			t.Fatalf("the gateway saves its allocations: %v", err)
		}
	}
	if _, err := (&kubestore.Store{Client: kc, Namespace: namespace, Site: "cloud-a"}).Load(); !apierrors.IsForbidden(err) {
		t.Errorf("the gateway reads a ConfigMap of another name: %v, want forbidden", err)
	}

	// Leadership under the Lease the Deployment names.
	ran := false
	lctx, lcancel := context.WithTimeout(ctx, 30*time.Second)
	defer lcancel()
	err = leader.Run(lctx, leader.Config{Client: kc, Namespace: namespace, Name: lease, Identity: "strait-gateway-0",
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 100 * time.Millisecond, Logger: log},
		func(context.Context) error { ran = true; return nil })
	if err != nil || !ran {
		t.Errorf("the gateway leads under Lease %s: ran=%t, %v", lease, ran, err)
	}
	if _, err := adminKube.CoordinationV1().Leases(namespace).Get(ctx, lease, metav1.GetOptions{}); err != nil {
		t.Errorf("Lease %s: %v", lease, err)
	}

	// And a few things it must not do, for real.
	if _, err := kc.CoreV1().Secrets(namespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the gateway lists secrets: %v, want forbidden", err)
	}
	crd := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if err := dyn.Resource(crd).Delete(ctx, "serviceexports.multicluster.x-k8s.io", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the gateway deletes a CRD: %v, want forbidden", err)
	}
}

func checkAgent(ctx context.Context, t *testing.T, admin, cfg *rest.Config) {
	diffRules(t, "agent, in "+namespace, rules(ctx, t, cfg, namespace), expand(
		"list,watch,patch /nodes",
		"list,watch /pods,namespaces",
		"list,watch networking.k8s.io/networkpolicies",
	))
	checkAccess(ctx, t, cfg, []access{
		{verb: "watch", resource: "nodes"},
		{verb: "patch", resource: "nodes", name: "n1"},
		{verb: "list", resource: "pods"},
		{verb: "watch", group: "networking.k8s.io", resource: "networkpolicies"},
	}, []access{
		{verb: "update", resource: "nodes", name: "n1"},
		{verb: "delete", resource: "nodes", name: "n1"},
		{verb: "patch", resource: "nodes", sub: "status", name: "n1"},
		{verb: "get", resource: "secrets", ns: namespace},
		{verb: "create", resource: "pods", ns: namespace},
		{verb: "delete", resource: "pods", ns: namespace, name: "x"},
		{verb: "get", resource: "configmaps", ns: namespace, name: "strait-allocations"},
		{verb: "list", group: "multicluster.x-k8s.io", resource: "serviceexports"},
		{verb: "create", group: "apiextensions.k8s.io", resource: "customresourcedefinitions"},
	})

	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	adminKube, err := kubernetes.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	// The informers nodeagent runs sync as the agent.
	f := informers.NewSharedInformerFactory(kc, 0)
	synced := []cache.InformerSynced{
		f.Core().V1().Nodes().Informer().HasSynced, f.Core().V1().Pods().Informer().HasSynced,
		f.Core().V1().Namespaces().Informer().HasSynced, f.Networking().V1().NetworkPolicies().Informer().HasSynced,
	}
	infCtx, stop := context.WithTimeout(ctx, 30*time.Second)
	f.Start(infCtx.Done())
	defer func() {
		stop()
		f.Shutdown() // waits for the informers, which stop with infCtx
	}()
	if !cache.WaitForCacheSync(infCtx.Done(), synced...) {
		t.Error("the agent's informers did not sync as the agent")
	}
	// Its one write: its VXLAN MAC on its Node, by a merge patch.
	if _, err := adminKube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{nodeagent.AnnotationVTEPMAC: "02:00:00:00:00:01"}}})
	if _, err := kc.CoreV1().Nodes().Patch(ctx, "n1", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Errorf("the agent annotates its Node: %v", err)
	}
	if err := kc.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the agent deletes a Node: %v, want forbidden", err)
	}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
