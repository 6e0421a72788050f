// Package kubestore keeps a site's address allocations in a Kubernetes
// ConfigMap, for gateways that run in a cluster: the same content and
// checksum as natpool.FileStore writes, with the previous copy beside it.
//
// Writes are compare-and-swap on the object's resourceVersion: if anyone
// else changed the object since this store read or wrote it (a second
// gateway of the site without leader election, a hand edit), Save fails
// rather than overwrite it. Load refuses an object it cannot trust, naming
// it, rather than let the gateway re-allocate under live traffic.
package kubestore

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/straitnet/strait/natpool"
)

// Keys of the ConfigMap's data.
const (
	KeyState    = "allocations.json"
	KeyPrevious = "previous.json"
)

// Store keeps allocations in one ConfigMap.
type Store struct {
	Client    kubernetes.Interface
	Namespace string
	// Name of the ConfigMap; default "strait-allocations-<site>".
	Name string
	Site string
	// Timeout of each API call; default 10s.
	Timeout time.Duration
	Now     func() time.Time

	mu sync.Mutex // guards the fields below
	// version is the resourceVersion of the object as last read or
	// written; empty before a Load, or if there is no object yet.
	version string
	// current is the state data last read or written.
	current string
	loaded  bool
}

var _ natpool.Store = (*Store)(nil)

func (s *Store) name() string {
	if s.Name != "" {
		return s.Name
	}
	return "strait-allocations-" + s.Site
}

// Where names the object.
func (s *Store) Where() string { return fmt.Sprintf("configmap %s/%s", s.Namespace, s.name()) }

func (s *Store) ctx() (context.Context, context.CancelFunc) {
	t := s.Timeout
	if t == 0 {
		t = 10 * time.Second
	}
	return context.WithTimeout(context.Background(), t)
}

// Load reads the allocations: none on a first start (no object), an error
// if the object cannot be read or trusted.
func (s *Store) Load() (natpool.State, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	cm, err := s.Client.CoreV1().ConfigMaps(s.Namespace).Get(ctx, s.name(), metav1.GetOptions{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if apierrors.IsNotFound(err) {
		s.version, s.current, s.loaded = "", "", true
		return natpool.State{}, nil
	}
	if err != nil {
		return natpool.State{}, fmt.Errorf("kubestore: read %s: %w", s.Where(), err)
	}
	data, ok := cm.Data[KeyState]
	var st natpool.State
	if !ok {
		err = fmt.Errorf("it has no %s", KeyState)
	} else {
		st, err = natpool.DecodeState(s.Site, []byte(data))
	}
	if err != nil {
		hint := ""
		if prev, ok := cm.Data[KeyPrevious]; ok {
			if pst, perr := natpool.DecodeState(s.Site, []byte(prev)); perr == nil {
				hint = fmt.Sprintf("; its previous good copy, key %s, holds %d allocations", KeyPrevious, len(pst.Allocations))
			}
		}
		return natpool.State{}, fmt.Errorf("kubestore: allocation state %s cannot be trusted: %v; refusing to start rather than re-allocate addresses under live traffic (the object is left as it is%s)", s.Where(), err, hint)
	}
	s.version, s.current, s.loaded = cm.ResourceVersion, data, true
	return st, nil
}

// Save replaces the state, keeping the one it replaces as the previous
// copy, if nobody else changed the object since it was read.
func (s *Store) Save(st natpool.State) error {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	data, err := natpool.EncodeState(s.Site, st, now())
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loaded {
		return fmt.Errorf("kubestore: save to %s before loading it", s.Where())
	}
	ctx, cancel := s.ctx()
	defer cancel()
	cms := s.Client.CoreV1().ConfigMaps(s.Namespace)
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name: s.name(), Namespace: s.Namespace, ResourceVersion: s.version,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "strait", "strait.dev/site": s.Site},
		},
		Data: map[string]string{KeyState: string(data)},
	}
	if s.current != "" {
		cm.Data[KeyPrevious] = s.current
	}
	var out *corev1.ConfigMap
	if s.version == "" {
		out, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	} else {
		out, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		// The write may have landed although the answer did not (a
		// timeout), or landed before a retry conflicted with it: if the
		// object holds exactly what was written, it is ours.
		if now, gerr := cms.Get(ctx, s.name(), metav1.GetOptions{}); gerr == nil && now.Data[KeyState] == string(data) {
			s.version, s.current = now.ResourceVersion, string(data)
			return nil
		}
		switch {
		case apierrors.IsAlreadyExists(err):
			return fmt.Errorf("kubestore: %s appeared since this gateway found none: another writer? Not overwriting it: %w", s.Where(), err)
		case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
			return fmt.Errorf("kubestore: %s changed since this gateway read it (another gateway of site %s, or an edit): not overwriting it: %w",
				s.Where(), s.Site, err)
		}
		return fmt.Errorf("kubestore: write %s: %w", s.Where(), err)
	}
	s.version, s.current = out.ResourceVersion, string(data)
	return nil
}
