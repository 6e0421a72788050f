// Package yamlpos decodes YAML configuration files by hand, node by node,
// so that every problem is reported with its file, line, column and field
// path, and every problem in a file is reported at once.
package yamlpos

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Error is one problem in a configuration file.
type Error struct {
	File   string
	Line   int
	Column int
	Field  string // such as "sites[1].publicKey"; empty for the whole file
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in a file, in file order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Sort puts the errors in file order.
func (l ErrorList) Sort() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Column - b.Column
	})
}

// Decoder collects the errors of one file.
type Decoder struct {
	File string
	Errs ErrorList
}

// Err returns the sorted errors, or nil.
func (d *Decoder) Err() error {
	if len(d.Errs) == 0 {
		return nil
	}
	d.Errs.Sort()
	return d.Errs
}

// Fail records a problem at node n (the whole file if nil).
func (d *Decoder) Fail(n *yaml.Node, field, format string, args ...any) {
	e := &Error{File: d.File, Field: field, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	d.Errs = append(d.Errs, e)
}

// Document parses data and returns its top node, or nil with the problem
// recorded (syntax error, empty file).
func (d *Decoder) Document(data []byte, expect string) *yaml.Node {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		e := &Error{File: d.File, Msg: "not valid YAML: " + msg}
		var line int
		if _, scanErr := fmt.Sscanf(msg, "line %d:", &line); scanErr == nil {
			e.Line, e.Column = line, 1
			e.Msg = "not valid YAML:" + strings.SplitN(msg, ":", 2)[1]
		}
		d.Errs = append(d.Errs, e)
		return nil
	}
	if len(doc.Content) == 0 {
		d.Fail(nil, "", "empty file: want %s", expect)
		return nil
	}
	return doc.Content[0]
}

// Fields returns the values of a mapping node by key, reporting unknown
// and repeated keys. known lists the keys in the order the docs give them.
func (d *Decoder) Fields(n *yaml.Node, field string, known ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		d.Fail(n, field, "want a mapping of %s, got %s", strings.Join(known, ", "), Kind(n))
		return nil
	}
	out := make(map[string]*yaml.Node)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := Join(field, k.Value)
		switch {
		case !slices.Contains(known, k.Value):
			d.Fail(k, name, "unknown field (known fields: %s)", strings.Join(known, ", "))
		case out[k.Value] != nil:
			d.Fail(k, name, "set twice (first on line %d)", out[k.Value].Line)
		default:
			out[k.Value] = v
		}
	}
	return out
}

// Require records every missing field of fs.
func (d *Decoder) Require(n *yaml.Node, fs map[string]*yaml.Node, field string, names ...string) {
	for _, name := range names {
		if fs[name] == nil {
			d.Fail(n, Join(field, name), "missing")
		}
	}
}

// List returns the items of a sequence node.
func (d *Decoder) List(n *yaml.Node, field, what string) []*yaml.Node {
	if n.Kind != yaml.SequenceNode {
		d.Fail(n, field, "want a list of %s, got %s", what, Kind(n))
		return nil
	}
	return n.Content
}

// Scalar returns a single value.
func (d *Decoder) Scalar(n *yaml.Node, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.Fail(n, field, "want a single value, got %s", Kind(n))
		return "", false
	}
	return n.Value, true
}

// Bool parses true or false.
func (d *Decoder) Bool(n *yaml.Node, field string) bool {
	s, ok := d.Scalar(n, field)
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		d.Fail(n, field, "%q is neither true nor false", s)
	}
	return b
}

// Int parses an integer between lo and hi.
func (d *Decoder) Int(n *yaml.Node, field string, lo, hi int, what string) int {
	s, ok := d.Scalar(n, field)
	if !ok {
		return 0
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < lo || v > hi {
		d.Fail(n, field, "%q is not %s (%d-%d)", s, what, lo, hi)
		return 0
	}
	return v
}

// Duration parses a Go duration such as 25s.
func (d *Decoder) Duration(n *yaml.Node, field string) (time.Duration, bool) {
	s, ok := d.Scalar(n, field)
	if !ok {
		return 0, false
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.Fail(n, field, "%q is not a duration such as 25s or 10m", s)
		return 0, false
	}
	return v, true
}

// Prefix parses a masked IPv4 prefix.
func (d *Decoder) Prefix(n *yaml.Node, field string) netip.Prefix {
	s, ok := d.Scalar(n, field)
	if !ok {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		d.Fail(n, field, "%q is not a CIDR prefix such as 10.0.0.0/16", s)
		return netip.Prefix{}
	}
	if p.Masked() != p {
		d.Fail(n, field, "%s has host bits set; the prefix is %s", p, p.Masked())
		return netip.Prefix{}
	}
	if !p.Addr().Is4() {
		d.Fail(n, field, "%s: only IPv4 prefixes are supported inside the mesh so far", p)
		return netip.Prefix{}
	}
	return p
}

// Addr parses an IPv4 address.
func (d *Decoder) Addr(n *yaml.Node, field string) netip.Addr {
	s, ok := d.Scalar(n, field)
	if !ok {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		d.Fail(n, field, "%q is not an IPv4 address", s)
		return netip.Addr{}
	}
	return a
}

// StringMap parses a mapping of strings to strings (labels).
func (d *Decoder) StringMap(n *yaml.Node, field string) map[string]string {
	if n.Kind != yaml.MappingNode {
		d.Fail(n, field, "want a mapping of labels, got %s", Kind(n))
		return nil
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if s, ok := d.Scalar(v, Join(field, k.Value)); ok {
			out[k.Value] = s
		}
	}
	return out
}

// Join builds a field path.
func Join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

// Kind describes a node for messages.
func Kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}
