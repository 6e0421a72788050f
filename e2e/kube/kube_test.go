package kube_test

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/straitnet/strait/e2e/kube/kubetest"
)

// TestServer starts a real API server and uses it: a namespace and a
// ConfigMap round trip, and two servers side by side do not share state.
func TestServer(t *testing.T) {
	t.Parallel()
	a, b := kubetest.Start(t), kubetest.Start(t)
	ctx := context.Background()
	ca, err := a.Client()
	if err != nil {
		t.Fatal(err)
	}
	cb, err := b.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "strait-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "strait-system"}, Data: map[string]string{"k": "v"}}
	if _, err := ca.CoreV1().ConfigMaps("strait-system").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := ca.CoreV1().ConfigMaps("strait-system").Get(ctx, "x", metav1.GetOptions{})
	if err != nil || got.Data["k"] != "v" {
		t.Fatalf("ConfigMap round trip: %v, %v", got, err)
	}
	if _, err := cb.CoreV1().Namespaces().Get(ctx, "strait-system", metav1.GetOptions{}); err == nil {
		t.Error("the second server sees the first one's namespace")
	}
}
