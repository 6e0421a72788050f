// Package metrics writes the Prometheus text exposition format (version
// 0.0.4): families of samples with HELP and TYPE lines, label values
// escaped, families sorted by name and samples by labels, so that one
// scrape reads like the next. It is pure: the gateway gathers the values
// from its status at scrape time and hands them over.
package metrics

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Type is a metric family's type.
type Type string

const (
	Gauge   Type = "gauge"
	Counter Type = "counter"
)

// Sample is one value with its labels, given as name, value pairs.
type Sample struct {
	Labels []string
	Value  float64
}

// Family is a metric family.
type Family struct {
	Name    string
	Help    string
	Type    Type
	Samples []Sample
}

// Set gathers families for one scrape.
type Set struct {
	families map[string]*Family
	err      error
}

var nameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
var labelRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// Add adds a sample to a family, creating it on first use. Labels come in
// name, value pairs. Misuse (a bad name, odd labels, a family added with
// two types or helps) is kept and returned by Write: a scrape must not
// silently lose series.
func (s *Set) Add(name string, typ Type, help string, value float64, labels ...string) {
	if s.families == nil {
		s.families = map[string]*Family{}
	}
	f, ok := s.families[name]
	if !ok {
		if !nameRE.MatchString(name) {
			s.fail(fmt.Errorf("metrics: %q is not a metric name", name))
			return
		}
		f = &Family{Name: name, Help: help, Type: typ}
		s.families[name] = f
	} else if f.Type != typ || f.Help != help {
		s.fail(fmt.Errorf("metrics: %s added as %s and as %s", name, f.Type, typ))
		return
	}
	if len(labels)%2 != 0 {
		s.fail(fmt.Errorf("metrics: %s: labels come in name, value pairs: %q", name, labels))
		return
	}
	for i := 0; i < len(labels); i += 2 {
		if !labelRE.MatchString(labels[i]) || strings.HasPrefix(labels[i], "__") {
			s.fail(fmt.Errorf("metrics: %s: %q is not a label name", name, labels[i]))
			return
		}
	}
	f.Samples = append(f.Samples, Sample{Labels: labels, Value: value})
}

func (s *Set) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

// Write writes the set in the text format.
func (s *Set) Write(w io.Writer) error {
	if s.err != nil {
		return s.err
	}
	var b strings.Builder
	names := make([]string, 0, len(s.families))
	for n := range s.families {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f := s.families[n]
		fmt.Fprintf(&b, "# HELP %s %s\n", f.Name, escapeHelp(f.Help))
		fmt.Fprintf(&b, "# TYPE %s %s\n", f.Name, f.Type)
		samples := slices.Clone(f.Samples)
		slices.SortStableFunc(samples, func(a, b Sample) int { return cmp.Compare(labelText(a.Labels), labelText(b.Labels)) })
		for i, sm := range samples {
			if i > 0 && labelText(sm.Labels) == labelText(samples[i-1].Labels) {
				return fmt.Errorf("metrics: %s%s twice", f.Name, labelText(sm.Labels))
			}
			fmt.Fprintf(&b, "%s%s %s\n", f.Name, labelText(sm.Labels), value(sm.Value))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func labelText(labels []string) string {
	if len(labels) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i < len(labels); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=\"%s\"", labels[i], escapeLabel(labels[i+1]))
	}
	b.WriteByte('}')
	return b.String()
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

func value(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
