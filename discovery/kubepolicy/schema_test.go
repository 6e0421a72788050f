package kubepolicy

import (
	"encoding"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// specSchema returns the OpenAPI schema of a CRD's spec.
func specSchema(t *testing.T, file string) map[string]any {
	t.Helper()
	crd, _, err := loadCRD(file)
	if err != nil {
		t.Fatal(err)
	}
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	if len(versions) != 1 {
		t.Fatalf("%s: %d versions, want 1", file, len(versions))
	}
	spec, ok, _ := unstructured.NestedMap(versions[0].(map[string]any), "schema", "openAPIV3Schema", "properties", "spec")
	if !ok {
		t.Fatalf("%s: no spec schema", file)
	}
	return spec
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// reporter is what compareSchema reports to: a *testing.T, or a recorder
// in the test that checks compareSchema itself.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// recorder collects reports.
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// jsonFields are a struct's fields by JSON name, with whether the JSON
// form always has them (no omitempty or omitzero).
func jsonFields(t reporter, typ reflect.Type) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for f := range typ.Fields() {
		if !f.IsExported() {
			continue
		}
		if f.Anonymous {
			t.Errorf("%s.%s: embedded fields are not handled here", typ, f.Name)
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			t.Errorf("%s.%s has no JSON name: give it a json tag", typ, f.Name)
			continue
		}
		o := strings.Split(opts, ",")
		out[name] = !slices.Contains(o, "omitempty") && !slices.Contains(o, "omitzero")
	}
	return out
}

// compareSchema walks a schema and a Go type together and reports every
// place where what the API server stores would not decode into the type
// as it means: a property the type lacks (encoding/json would refuse it),
// a field the schema lacks (it could never be set), a type mismatch, a
// required list that is not the fields without omitempty, an integer
// whose bounds do not fit the Go type.
func compareSchema(t reporter, path string, sch map[string]any, typ reflect.Type, skip []string) {
	t.Helper()
	st, _ := sch["type"].(string)
	want := ""
	switch {
	case reflect.PointerTo(typ).Implements(textUnmarshaler):
		want = "string" // netip.Addr, meshpolicy.Duration
	case typ.Kind() == reflect.Struct:
		want = "object"
	case typ.Kind() == reflect.Map:
		want = "object"
	case typ.Kind() == reflect.Slice:
		want = "array"
	case typ.Kind() == reflect.String:
		want = "string"
	case typ.Kind() == reflect.Bool:
		want = "boolean"
	case isInt(typ) || isUint(typ):
		want = "integer"
	default:
		t.Errorf("%s: Go type %s is not handled by this test", path, typ)
		return
	}
	if st != want {
		t.Errorf("%s: schema type %q, Go type %s wants %q", path, st, typ, want)
		return
	}
	if sch["x-kubernetes-preserve-unknown-fields"] != nil {
		t.Errorf("%s: x-kubernetes-preserve-unknown-fields: unknown fields must be pruned", path)
	}
	if want == "string" || want == "boolean" {
		return
	}
	if want == "integer" {
		lo, hi := int64(math.MinInt64), uint64(math.MaxUint64)
		if isInt(typ) {
			bits := typ.Bits()
			lo, hi = -1<<(bits-1), 1<<(bits-1)-1
		} else {
			lo, hi = 0, 1<<typ.Bits()-1
		}
		min, okMin := sch["minimum"].(int64)
		max, okMax := sch["maximum"].(int64)
		if !okMin || !okMax {
			t.Errorf("%s: no minimum and maximum; a %s needs both", path, typ)
			return
		}
		if min < lo || max < 0 || uint64(max) > hi {
			t.Errorf("%s: %d..%d does not fit a %s", path, min, max, typ)
		}
		return
	}
	props, _ := sch["properties"].(map[string]any)
	addl, _ := sch["additionalProperties"].(map[string]any)
	switch typ.Kind() {
	case reflect.Slice:
		items, ok := sch["items"].(map[string]any)
		if !ok {
			t.Errorf("%s: an array without items", path)
			return
		}
		compareSchema(t, path+"[]", items, typ.Elem(), nil)
	case reflect.Map:
		if typ.Key().Kind() != reflect.String || props != nil || addl == nil {
			t.Errorf("%s: a %s wants an object with additionalProperties only", path, typ)
			return
		}
		compareSchema(t, path+"{}", addl, typ.Elem(), nil)
	case reflect.Struct:
		if addl != nil {
			t.Errorf("%s: additionalProperties on a struct", path)
		}
		fields := jsonFields(t, typ)
		var required []string
		for name, always := range fields {
			p := path + "." + name
			if slices.Contains(skip, name) {
				if _, ok := props[name]; ok {
					t.Errorf("%s: in the schema, but it is not the spec's (it comes from metadata or the gateway)", p)
				}
				continue
			}
			sub, ok := props[name].(map[string]any)
			if !ok {
				t.Errorf("%s: %s has JSON field %q, the schema has no such property", p, typ, name)
				continue
			}
			compareSchema(t, p, sub, typ.Field(fieldIndex(typ, name)).Type, nil)
			if always {
				required = append(required, name)
			}
		}
		for name := range props {
			if _, ok := fields[name]; !ok || slices.Contains(skip, name) {
				t.Errorf("%s.%s: in the schema, but %s has no such JSON field", path, name, typ)
			}
		}
		var req []string
		if r, ok := sch["required"].([]any); ok {
			for _, x := range r {
				req = append(req, fmt.Sprint(x))
			}
		}
		slices.Sort(required)
		slices.Sort(req)
		if !slices.Equal(req, required) {
			t.Errorf("%s: schema requires %v; the fields of %s without omitempty are %v", path, req, typ, required)
		}
	}
}

func isInt(typ reflect.Type) bool {
	switch typ.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return true
	}
	return false
}

func isUint(typ reflect.Type) bool {
	switch typ.Kind() {
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

func fieldIndex(typ reflect.Type, jsonName string) int {
	for i := range typ.NumField() {
		if name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ","); name == jsonName {
			return i
		}
	}
	return -1
}

// TestSchemaMatchesTypes keeps the CRDs' spec schemas and the meshpolicy
// types in step: an object converts into meshpolicy values through
// encoding/json, so every property must be a JSON field of the type and
// the reverse, with matching types and required fields.
func TestSchemaMatchesTypes(t *testing.T) {
	t.Parallel()
	compareSchema(t, "GlobalService.spec", specSchema(t, crdFiles[0]), reflect.TypeFor[meshpolicy.GlobalService](), notInSpec[KindGlobalService])
	compareSchema(t, "FirewallPolicy.spec", specSchema(t, crdFiles[1]), reflect.TypeFor[meshpolicy.Policy](), notInSpec[KindFirewallPolicy])
}

// TestSchemaCatchesDrift checks that compareSchema notices what it
// guards against, on a schema made wrong on purpose.
func TestSchemaCatchesDrift(t *testing.T) {
	t.Parallel()
	type port struct {
		Protocol string `json:"protocol,omitempty"`
		Port     uint16 `json:"port"`
	}
	good := func() map[string]any {
		return map[string]any{"type": "object", "required": []any{"port"}, "properties": map[string]any{
			"protocol": map[string]any{"type": "string"},
			"port":     map[string]any{"type": "integer", "minimum": int64(1), "maximum": int64(65535)},
		}}
	}
	for _, tc := range []struct {
		name  string
		spoil func(m map[string]any)
		want  string
	}{
		{"renamed property", func(m map[string]any) {
			p := m["properties"].(map[string]any)
			p["proto"] = p["protocol"]
			delete(p, "protocol")
		}, `has JSON field "protocol", the schema has no such property`},
		{"extra property", func(m map[string]any) {
			m["properties"].(map[string]any)["name"] = map[string]any{"type": "string"}
		}, "port.name: in the schema, but"},
		{"wrong type", func(m map[string]any) {
			m["properties"].(map[string]any)["port"].(map[string]any)["type"] = "string"
		}, `port.port: schema type "string"`},
		{"not required", func(m map[string]any) { delete(m, "required") },
			"schema requires []; the fields of kubepolicy.port without omitempty are [port]"},
		{"too large for the type", func(m map[string]any) {
			m["properties"].(map[string]any)["port"].(map[string]any)["maximum"] = int64(70000)
		}, "1..70000 does not fit a uint16"},
		{"unbounded", func(m map[string]any) {
			delete(m["properties"].(map[string]any)["port"].(map[string]any), "maximum")
		}, "no minimum and maximum"},
		{"kept unknown fields", func(m map[string]any) {
			m["x-kubernetes-preserve-unknown-fields"] = true
		}, "unknown fields must be pruned"},
		{"a metadata field in the spec", func(m map[string]any) {}, "port.port: in the schema, but it is not the spec's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := good()
			tc.spoil(m)
			var skip []string
			if tc.name == "a metadata field in the spec" {
				skip = []string{"port"}
			}
			var r recorder
			compareSchema(&r, "port", m, reflect.TypeFor[port](), skip)
			if !slices.ContainsFunc(r.errs, func(e string) bool { return strings.Contains(e, tc.want) }) {
				t.Errorf("compareSchema reported %q, want %q", r.errs, tc.want)
			}
		})
	}
	var r recorder
	compareSchema(&r, "port", good(), reflect.TypeFor[port](), nil)
	if len(r.errs) != 0 {
		t.Errorf("compareSchema refused a schema that matches: %q", r.errs)
	}
}

// lookup follows a path of property names through a schema: "[]" steps
// into items, "{}" into additionalProperties.
func lookup(t *testing.T, sch map[string]any, path string) map[string]any {
	t.Helper()
	for step := range strings.SplitSeq(path, ".") {
		name, suffix := step, ""
		if i := strings.IndexAny(step, "[{"); i >= 0 {
			name, suffix = step[:i], step[i:]
		}
		next, ok := sch["properties"].(map[string]any)[name].(map[string]any)
		if !ok {
			t.Fatalf("%s: no property %s", path, name)
		}
		sch = next
		for ; suffix != ""; suffix = suffix[2:] {
			key := "items"
			if suffix[:2] == "{}" {
				key = "additionalProperties"
			}
			if sch, ok = sch[key].(map[string]any); !ok {
				t.Fatalf("%s: no %s", path, key)
			}
		}
	}
	return sch
}

// TestSchemaLimits checks the schema's bounds and enums against
// meshpolicy's constants, so that the API server refuses what the gateway
// would (with a field error at once rather than a condition later).
func TestSchemaLimits(t *testing.T) {
	t.Parallel()
	gs, fwp := specSchema(t, crdFiles[0]), specSchema(t, crdFiles[1])
	for _, tc := range []struct {
		sch       map[string]any
		path, key string
		want      any
	}{
		{gs, "weights", "maxProperties", int64(meshpolicy.MaxWeightedSets)},
		{gs, "weights{}", "maximum", int64(meshpolicy.MaxWeight)},
		{gs, "locality", "enum", []any{string(meshpolicy.LocalityCluster), string(meshpolicy.LocalityRegion), string(meshpolicy.LocalityNone)}},
		{fwp, "priority", "maximum", int64(meshpolicy.MaxPriority)},
		{fwp, "rules", "maxItems", int64(meshpolicy.MaxRules)},
		{fwp, "rules[].action", "enum", []any{string(meshpolicy.Allow), string(meshpolicy.Deny)}},
		{fwp, "rules[].from", "maxItems", int64(meshpolicy.MaxPeers)},
		{fwp, "rules[].to", "maxItems", int64(meshpolicy.MaxPeers)},
		{fwp, "rules[].from[].labels", "maxProperties", int64(meshpolicy.MaxLabels)},
		{fwp, "rules[].to[].ports", "maxItems", int64(meshpolicy.MaxPorts)},
	} {
		got := lookup(t, tc.sch, tc.path)[tc.key]
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s %s: %v, want %v", tc.path, tc.key, got, tc.want)
		}
	}
	// The timeout rule assumes meshpolicy's default interval.
	var rules []string
	for _, v := range lookup(t, gs, "healthCheck")["x-kubernetes-validations"].([]any) {
		rules = append(rules, v.(map[string]any)["rule"].(string))
	}
	def := fmt.Sprintf("duration('%s')", meshpolicy.DefaultInterval)
	if !slices.ContainsFunc(rules, func(r string) bool { return strings.Contains(r, def) }) {
		t.Errorf("no healthCheck rule uses the default interval %s: %q", def, rules)
	}
}
