package kubepolicy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// resolved is what one GlobalService or FirewallPolicy object says: a
// meshpolicy value, or why it cannot be declared.
type resolved struct {
	kind string
	key  string // "namespace/name" of a GlobalService, "name" of a FirewallPolicy
	svc  meshpolicy.GlobalService
	pol  meshpolicy.Policy
	// errs say why the object is not declared; none when it is valid.
	errs []meshpolicy.FieldError
}

func (r resolved) valid() bool { return len(r.errs) == 0 }

// why is the validation errors as one line.
func (r resolved) why() string { return meshpolicy.Errors(r.errs).Error() }

// problem is the line Declared reports for an invalid object.
func (r resolved) problem() string { return r.kind + " " + r.key + ": " + r.why() }

func (r resolved) equal(o resolved) bool {
	if r.valid() != o.valid() {
		return false
	}
	if !r.valid() {
		return r.why() == o.why()
	}
	if r.kind == KindGlobalService {
		return r.svc.Equal(o.svc)
	}
	return r.pol.Equal(o.pol)
}

// notInSpec are the JSON fields of the meshpolicy types that an object's
// spec does not have: the namespace and name come from metadata, and
// whether a VIP was allocated is the gateway's to say.
var notInSpec = map[string][]string{
	KindGlobalService:  {"namespace", "name", "allocated"},
	KindFirewallPolicy: {"name"},
}

// resolveService converts a GlobalService object: its spec through JSON
// into meshpolicy.GlobalService, its namespace and name from metadata,
// then meshpolicy's validation, which also refuses what the schema cannot
// see (a loopback VIP, a timeout above the default interval).
func resolveService(u *unstructured.Unstructured) resolved {
	r := resolved{kind: KindGlobalService, key: u.GetNamespace() + "/" + u.GetName()}
	if err := decodeSpec(u, &r.svc, notInSpec[r.kind]); err != nil {
		r.errs = []meshpolicy.FieldError{{Field: "spec", Msg: err.Error()}}
		return r
	}
	r.svc.Namespace, r.svc.Name = u.GetNamespace(), u.GetName()
	r.errs = r.svc.Validate()
	return r
}

// resolvePolicy converts a FirewallPolicy object as resolveService does.
func resolvePolicy(u *unstructured.Unstructured) resolved {
	r := resolved{kind: KindFirewallPolicy, key: u.GetName()}
	if err := decodeSpec(u, &r.pol, notInSpec[r.kind]); err != nil {
		r.errs = []meshpolicy.FieldError{{Field: "spec", Msg: err.Error()}}
		return r
	}
	r.pol.Name = u.GetName()
	r.errs = r.pol.Validate()
	return r
}

// decodeSpec decodes the object's spec into v. A field that v does not
// know, or one of skip, is an error, not ignored: the schema prunes
// unknown fields, so one that arrives comes from a CRD other than this
// package's, and ignoring part of a firewall rule (an exception, a
// narrower port) would widen it.
func decodeSpec(u *unstructured.Unstructured, v any, skip []string) error {
	spec, ok := u.Object["spec"]
	if !ok || spec == nil {
		return nil
	}
	if m, ok := spec.(map[string]any); ok {
		for k := range m {
			// encoding/json matches field names regardless of case.
			if slices.ContainsFunc(skip, func(f string) bool { return strings.EqualFold(k, f) }) {
				return fmt.Errorf("unknown field %q", k)
			}
		}
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%s: a %s does not fit (want %s)", te.Field, te.Value, te.Type)
		}
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}
