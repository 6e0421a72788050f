// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// strait's NetworkPolicy enforcement on a pod's host-side veth.
//
// to_pod runs on the veth's TC egress (what the node sends into the pod:
// the pod's ingress); from_pod on its TC ingress (what the pod sends: its
// egress). For a packet of local pod P in direction D with peer address A:
//   1. a reply or continuation of a connection allowed before passes
//      (conntrack map, keyed by pod and direction);
//   2. if (P, D) is not enforced, it passes;
//   3. the longest entry (P, D, prefix of A) of the policy trie gives the
//      protocols and ports allowed; no entry, or a port outside, drops.
// The maps are filled by strait-agent from its compiled policies
// (package nodeagent/policy). Non-IPv4 traffic passes: IPv6 policy is not
// enforced yet.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_RANGES 16
// A connection idle this long must pass the rules again.
#define CT_IDLE_NS (120ULL * 1000000000ULL)
#define DIR_INGRESS 0
#define DIR_EGRESS 1

struct policy_key {
	__u32 prefixlen; // 64 + the peer prefix's length
	__u32 pod;       // network order
	__u32 dir;
	__u32 peer;      // network order
};

struct port_range {
	__u8 proto; // 0: any
	__u8 pad;
	__u16 lo;   // host order
	__u16 hi;
	__u16 pad2;
};

struct port_set {
	__u32 any;
	__u32 n;
	struct port_range r[MAX_RANGES];
};

struct pod_dir {
	__u32 pod;
	__u32 dir;
};

struct ct_key {
	__u32 pod;
	__u32 dir;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct policy_key);
	__type(value, struct port_set);
} policy_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, struct pod_dir);
	__type(value, __u32);
} policy_enforced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, __u64);
} policy_ct SEC(".maps");

// The pod behind each host veth, by ifindex: its IPv4 address, network
// order. What a pod sends must carry it as source (no spoofing past the
// rules or into the conntrack map), and the pod's identity is taken from
// here, not from the packet.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} policy_pods SEC(".maps");

enum { C_ALLOWED, C_DENIED, C_CT, C_UNENFORCED, C_SPOOFED, C_V6DENIED, C_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} policy_counters SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *c = bpf_map_lookup_elem(&policy_counters, &i);
	if (c)
		*c += 1;
}

static __always_inline int ports_allow(const struct port_set *s, __u8 proto, __u16 port)
{
	if (s->any)
		return 1;
#pragma unroll
	for (int i = 0; i < MAX_RANGES; i++) {
		if (i >= s->n)
			break;
		const struct port_range *r = &s->r[i];
		if (r->proto != 0 && r->proto != proto)
			continue;
		if (port >= r->lo && port <= r->hi)
			return 1;
	}
	return 0;
}

static __always_inline int enforced(__u32 pod, __u32 dir)
{
	struct pod_dir pd = {.pod = pod, .dir = dir};
	return bpf_map_lookup_elem(&policy_enforced, &pd) != 0;
}

// ct_live says whether k is a connection seen within CT_IDLE_NS, and
// refreshes it.
static __always_inline int ct_live(struct ct_key *k, __u64 now)
{
	__u64 *seen = bpf_map_lookup_elem(&policy_ct, k);
	if (!seen)
		return 0;
	if (now - *seen > CT_IDLE_NS) {
		bpf_map_delete_elem(&policy_ct, k);
		return 0;
	}
	*seen = now;
	return 1;
}

// IPv6 policy is not compiled yet: a pod enforced in a direction keeps
// only neighbour discovery there, rather than an open door.
static __always_inline int decide6(void *l3, void *end, const __u32 *pod, __u32 dir)
{
	if (!pod || !enforced(*pod, dir))
		return TC_ACT_OK;
	struct ipv6hdr *ip6 = l3;
	if ((void *)(ip6 + 1) > end)
		return TC_ACT_SHOT;
	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		struct icmp6hdr *icmp = (void *)(ip6 + 1);
		if ((void *)(icmp + 1) > end)
			return TC_ACT_SHOT;
		if (icmp->icmp6_type >= 133 && icmp->icmp6_type <= 137)
			return TC_ACT_OK;
	}
	count(C_V6DENIED);
	return TC_ACT_SHOT;
}

static __always_inline int decide(struct __sk_buff *skb, __u32 dir)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 ifindex = skb->ifindex;
	const __u32 *known = bpf_map_lookup_elem(&policy_pods, &ifindex);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return decide6(eth + 1, end, known, dir);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return TC_ACT_OK;
	__u16 sport = 0, dport = 0;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return TC_ACT_SHOT;
	int first = !(ip->frag_off & bpf_htons(0x1fff));
	if (first && (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_SCTP)) {
		struct udphdr *l4 = (void *)ip + ihl; // ports sit alike in TCP and SCTP
		if ((void *)(l4 + 1) > end)
			return TC_ACT_SHOT;
		sport = bpf_ntohs(l4->source);
		dport = bpf_ntohs(l4->dest);
	}
	__u32 pod = dir == DIR_INGRESS ? ip->daddr : ip->saddr;
	__u32 peer = dir == DIR_INGRESS ? ip->saddr : ip->daddr;
	if (known) {
		if (dir == DIR_EGRESS && ip->saddr != *known) {
			count(C_SPOOFED);
			return TC_ACT_SHOT;
		}
		pod = *known;
	}

	struct ct_key ct = {.pod = pod, .dir = dir, .saddr = ip->saddr, .daddr = ip->daddr,
			    .sport = sport, .dport = dport, .proto = ip->protocol};
	__u64 now = bpf_ktime_get_ns();
	struct ct_key rev = {.pod = pod, .dir = dir ^ 1, .saddr = ip->daddr, .daddr = ip->saddr,
			     .sport = dport, .dport = sport, .proto = ip->protocol};
	if (ct_live(&ct, now) || ct_live(&rev, now)) {
		count(C_CT);
		return TC_ACT_OK;
	}
	if (!enforced(pod, dir)) {
		// Free to go this way; its replies meet the other direction's
		// rules, and must pass them as replies.
		if (enforced(pod, dir ^ 1))
			bpf_map_update_elem(&policy_ct, &ct, &now, BPF_ANY);
		count(C_UNENFORCED);
		return TC_ACT_OK;
	}
	// Later fragments carry no ports: they follow the first one, which
	// the stack reassembles before delivery anyway.
	if (!first) {
		count(C_ALLOWED);
		return TC_ACT_OK;
	}
	struct policy_key k = {.prefixlen = 96, .pod = pod, .dir = dir, .peer = peer};
	struct port_set *s = bpf_map_lookup_elem(&policy_rules, &k);
	if (!s || !ports_allow(s, ip->protocol, dport)) {
		count(C_DENIED);
		return TC_ACT_SHOT;
	}
	bpf_map_update_elem(&policy_ct, &ct, &now, BPF_ANY);
	count(C_ALLOWED);
	return TC_ACT_OK;
}

SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	return decide(skb, DIR_INGRESS);
}

SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	return decide(skb, DIR_EGRESS);
}

char __license[] SEC("license") = "Dual BSD/GPL";
