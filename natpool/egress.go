package natpool

import (
	"fmt"
	"net/netip"
)

// EgressRule narrows the egress address of some of a site's pods: those of
// a namespace, those a label selector picks, or both. Rules apply in order;
// the first that matches a pod decides, and pods no rule matches leave as
// the site's default egress address.
type EgressRule struct {
	Name string
	// Namespace, if set, is the namespace the pods must be in.
	Namespace string
	// Selector, if set, holds labels the pods must all carry.
	Selector map[string]string
	// Pool is the egress pool the rule's address comes from.
	Pool string
}

// Pod is what egress rules select by.
type Pod struct {
	Namespace, Name string
	IP              netip.Addr
	Labels          map[string]string
}

// Allocation keys of egress addresses.
const egressDefaultKey = "egress/default"

// EgressDefaultKey is the allocation key of the site's default egress address.
func EgressDefaultKey() string { return egressDefaultKey }

// EgressRuleKey is the allocation key of an egress rule's address.
func EgressRuleKey(rule string) string { return "egress/rule/" + rule }

// IngressKey is the allocation key of a service's ingress address.
func IngressKey(namespace, name string) string {
	return fmt.Sprintf("ingress/%s/%s", namespace, name)
}

// Matches reports whether a rule selects a pod.
func (r EgressRule) Matches(p Pod) bool {
	if r.Namespace != "" && r.Namespace != p.Namespace {
		return false
	}
	for k, v := range r.Selector {
		if got, ok := p.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// CompileEgress decides which pods leave by a rule's address: it maps each
// pod a rule selects to that rule (the first that matches), and leaves out
// pods that take the default.
func CompileEgress(rules []EgressRule, pods []Pod) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, p := range pods {
		for _, r := range rules {
			if r.Matches(p) {
				out[p.IP] = r.Name
				break
			}
		}
	}
	return out
}
