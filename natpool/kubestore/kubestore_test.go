package kubestore

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/straitnet/strait/e2e/kube/kubetest"
	"github.com/straitnet/strait/natpool"
)

func state(n int) natpool.State {
	var st natpool.State
	for i := range n {
		st.Allocations = append(st.Allocations, natpool.Allocation{Key: fmt.Sprintf("ingress/default/s%d", i), Pool: "ingress",
			IP: netip.AddrFrom4([4]byte{242, 1, 128, byte(1 + i)}), Since: time.Date(2026, 11, 25, 12, 0, i, 0, time.UTC)})
	}
	return st
}

func client(t *testing.T) kubernetes.Interface {
	t.Helper()
	srv := kubetest.Start(t)
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "strait-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStoreOnARealAPIServer(t *testing.T) {
	c := client(t)
	ctx := context.Background()
	s := &Store{Client: c, Namespace: "strait-system", Site: "cloud-b"}
	if st, err := s.Load(); err != nil || len(st.Allocations) != 0 {
		t.Fatalf("first start: %v, %v", st, err)
	}
	if err := s.Save(state(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(state(2)); err != nil {
		t.Fatal(err)
	}
	// A restart: another Store reads what the first wrote.
	s2 := &Store{Client: c, Namespace: "strait-system", Site: "cloud-b"}
	st, err := s2.Load()
	if err != nil || fmt.Sprint(st) != fmt.Sprint(state(2)) {
		t.Fatalf("after a restart: %v, %v; want %v", st, err, state(2))
	}
	cm, err := c.CoreV1().ConfigMaps("strait-system").Get(ctx, "strait-allocations-cloud-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if prev, err := natpool.DecodeState("cloud-b", []byte(cm.Data[KeyPrevious])); err != nil || len(prev.Allocations) != 1 {
		t.Errorf("previous copy: %v, %v", prev, err)
	}
	if cm.Labels["strait.dev/site"] != "cloud-b" {
		t.Errorf("labels %v", cm.Labels)
	}

	// Someone else writes (a second gateway of the site): the first
	// store's next save must not overwrite it.
	if err := s2.Save(state(3)); err != nil {
		t.Fatal(err)
	}
	err = s.Save(state(4))
	if err == nil || !strings.Contains(err.Error(), "changed since this gateway read it") {
		t.Errorf("save over another writer's: %v", err)
	}
	if !apierrors.IsConflict(err) {
		t.Errorf("the refusal does not wrap the API's conflict: %v", err)
	}
	if st, _ := (&Store{Client: c, Namespace: "strait-system", Site: "cloud-b"}).Load(); len(st.Allocations) != 3 {
		t.Errorf("the other writer's state was overwritten: %d allocations", len(st.Allocations))
	}

	// A write that landed although its answer was lost: the store's
	// version is stale, but the object holds exactly what it wrote.
	s3 := &Store{Client: c, Namespace: "strait-system", Site: "cloud-b", Now: func() time.Time { return time.Unix(1, 0) }}
	if _, err := s3.Load(); err != nil {
		t.Fatal(err)
	}
	landed, _ := natpool.EncodeState("cloud-b", state(5), time.Unix(1, 0))
	cm, _ = c.CoreV1().ConfigMaps("strait-system").Get(ctx, "strait-allocations-cloud-b", metav1.GetOptions{})
	cm.Data[KeyState] = string(landed)
	if _, err := c.CoreV1().ConfigMaps("strait-system").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s3.Save(state(5)); err != nil {
		t.Errorf("saving what already landed: %v", err)
	}
	if err := s3.Save(state(6)); err != nil {
		t.Errorf("the next save after adopting the landed write: %v", err)
	}
}

func TestStoreRefusesWhatItCannotTrust(t *testing.T) {
	c := client(t)
	ctx := context.Background()
	s := &Store{Client: c, Namespace: "strait-system", Site: "cloud-b"}
	s.Load()
	s.Save(state(1))
	s.Save(state(2))
	cms := c.CoreV1().ConfigMaps("strait-system")
	for name, edit := range map[string]func(*corev1.ConfigMap){
		"edited": func(cm *corev1.ConfigMap) {
			cm.Data[KeyState] = strings.Replace(cm.Data[KeyState], "242.1.128.1", "242.1.128.9", 1)
		},
		"truncated": func(cm *corev1.ConfigMap) { cm.Data[KeyState] = cm.Data[KeyState][:40] },
		"key gone":  func(cm *corev1.ConfigMap) { delete(cm.Data, KeyState) },
		"other site": func(cm *corev1.ConfigMap) {
			cm.Data[KeyState] = strings.Replace(cm.Data[KeyState], `"site": "cloud-b"`, `"site": "cloud-c"`, 1)
		},
	} {
		t.Run(name, func(t *testing.T) {
			cm, err := cms.Get(ctx, "strait-allocations-cloud-b", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			good := cm.DeepCopy()
			edit(cm)
			if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			_, err = (&Store{Client: c, Namespace: "strait-system", Site: "cloud-b"}).Load()
			if err == nil || !strings.Contains(err.Error(), "configmap strait-system/strait-allocations-cloud-b cannot be trusted") ||
				!strings.Contains(err.Error(), "previous good copy, key previous.json, holds 1 allocations") {
				t.Errorf("Load = %v; want a refusal naming the object and its previous copy", err)
			}
			cm, _ = cms.Get(ctx, "strait-allocations-cloud-b", metav1.GetOptions{})
			good.ResourceVersion = cm.ResourceVersion
			if _, err := cms.Update(ctx, good, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
