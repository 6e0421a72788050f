package bgp

import (
	api "github.com/osrg/gobgp/v3/api"
)

// Names of the gobgp objects the filters become.
const (
	importSet    = "strait-import"
	exportSet    = "strait-export"
	importPolicy = "strait-import"
	exportPolicy = "strait-export"
)

// policies turns the configuration's filters into gobgp policy: the import
// filter accepts what an import rule matches and rejects the rest (no
// rules: nothing); the export filter accepts the gateway's own
// announcements that an export rule matches, or all of them when there are
// no export rules, and nothing else: a route one router announces is never
// passed on to another. Both policies always exist, so that the
// assignments (assignments) that name them never change; gobgp's
// SetPolicies replaces sets and policies but keeps assignments.
func policies(c Config) *api.SetPoliciesRequest {
	req := &api.SetPoliciesRequest{}
	// gobgp passes the gateway's own announcements through the import
	// policy too: they are accepted first.
	in := &api.Policy{Name: importPolicy, Statements: []*api.Statement{{
		Name:       importPolicy + "-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
	}}}
	if len(c.Import) > 0 {
		req.DefinedSets = append(req.DefinedSets, prefixSet(importSet, c.Import))
		in.Statements = append(in.Statements, acceptSet(importPolicy, importSet))
	}
	out := &api.Policy{Name: exportPolicy, Statements: []*api.Statement{{
		Name:       exportPolicy + "-local",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
	}}}
	if len(c.Export) > 0 {
		req.DefinedSets = append(req.DefinedSets, prefixSet(exportSet, c.Export))
		st := acceptSet(exportPolicy, exportSet)
		st.Conditions.RouteType = api.Conditions_ROUTE_TYPE_LOCAL
		out.Statements = []*api.Statement{st}
	}
	req.Policies = []*api.Policy{in, out}
	return req
}

// assignments apply the policies to every peer ("global"); what no
// statement accepts is rejected.
func assignments() []*api.PolicyAssignment {
	return []*api.PolicyAssignment{
		{Name: "global", Direction: api.PolicyDirection_IMPORT, Policies: []*api.Policy{{Name: importPolicy}}, DefaultAction: api.RouteAction_REJECT},
		{Name: "global", Direction: api.PolicyDirection_EXPORT, Policies: []*api.Policy{{Name: exportPolicy}}, DefaultAction: api.RouteAction_REJECT},
	}
}

func prefixSet(name string, rules []PrefixRule) *api.DefinedSet {
	ds := &api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name}
	for _, r := range rules {
		ds.Prefixes = append(ds.Prefixes, &api.Prefix{
			IpPrefix:      r.Prefix.String(),
			MaskLengthMin: uint32(r.Prefix.Bits()),
			MaskLengthMax: uint32(r.Max()),
		})
	}
	return ds
}

func acceptSet(policy, set string) *api.Statement {
	return &api.Statement{
		Name:       policy + "-accept",
		Conditions: &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: set}},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
	}
}
