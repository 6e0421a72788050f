# strait: multi-cloud cluster mesh with centralized NAT.
#
#   make demo    build, bring up the lab's merger topology, show it working
#   make test    every test (unit, fuzz seeds, namespace and end-to-end)
#   make bench   every benchmark, one JSON line each

SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Debian packages the lab and the tests use, and a command of each.
DEB_PACKAGES := iproute2:ip nftables:nft wireguard-tools:wg wireguard-go:wireguard-go \
	iperf3:iperf3 iputils-ping:ping conntrack:conntrack tcpdump:tcpdump etcd-server:etcd \
	dnsperf:dnsperf bind9-dnsutils:dig prometheus:promtool chromium:chromium \
	bird2:bird
# Debian packages whose files are not in PATH, and a file of each.
DEB_FILES := containernetworking-plugins:/usr/lib/cni/bridge

.PHONY: all build deps demo test check kube-binaries bench fuzz generate clean

all: build

## deps: install what is missing (Debian packages, Go modules); quiet when all is there
deps:
	@missing=""; for pc in $(DEB_PACKAGES); do \
		command -v "$${pc#*:}" >/dev/null 2>&1 || missing="$$missing $${pc%%:*}"; \
	done; \
	for pf in $(DEB_FILES); do \
		test -e "$${pf#*:}" || missing="$$missing $${pf%%:*}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		export DEBIAN_FRONTEND=noninteractive; \
		$$sudo apt-get update -qq >/dev/null && \
		$$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
		{ echo "apt-get install$$missing failed" >&2; exit 1; }; \
	fi
	@$(GO) mod download

## build: the binaries in ./bin, and the upstream wireguard-go (benchmark baseline)
## built from the golang.zx2c4.com/wireguard version in go.mod
build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...
	$(GO) build -o $(BIN)/wireguard-go golang.zx2c4.com/wireguard

## demo: the merger topology with everything working, the clouds on real kube-apiservers
demo: deps build kube-binaries
	@$(BIN)/strait lab down --run demo >/dev/null
	@$(BIN)/strait lab up --run demo --topology merger --kube
	@echo
	@$(BIN)/strait lab matrix --run demo --paths
	@echo
	@echo "cloud-b-pod1 resolves cloud-a's service through cloud-b's gateway, which learned it by gossip:"
	@$(BIN)/strait lab exec --run demo cloud-b-pod1 -- dig +noall +answer @172.31.0.1 cloud-a-pod1.default.svc.clusterset.local
	@echo
	@echo "default/web is exported by cloud-a and cloud-b and global: one VIP, balanced by onprem's gateway over both clouds:"
	@$(BIN)/strait lab exec --run demo onprem-pod1 -- dig +noall +answer @172.31.0.1 web.default.svc.clusterset.local
	@$(BIN)/strait lab connect --run demo -n 20 onprem-pod1 $$($(BIN)/strait lab exec --run demo onprem-pod1 -- dig +short @172.31.0.1 web.default.svc.clusterset.local)
	@echo
	@echo "cloud-a and cloud-b are Kubernetes clusters, each with its own kube-apiserver, both with services on 10.96.0.0/12."
	@echo "cloud-b exports demo/app (a Service on port 80 in front of cloud-b-pod1, and a ServiceExport);"
	@echo "cloud-a gets the namespace demo: the MCS API imports only into namespaces that exist:"
	@$(BIN)/strait lab kube --run demo cloud-a apply -f e2e/lab/demo/namespace.yaml
	@$(BIN)/strait lab kube --run demo cloud-b apply -f e2e/lab/demo/app.yaml
	@echo
	@echo "cloud-a's gateway learns the export by gossip and makes the ServiceImport in cloud-a:"
	@$(BIN)/strait lab kube --run demo cloud-a get serviceimports app -n demo --wait 60s
	@echo
	@echo "cloud-a-pod1 resolves it through cloud-a's gateway:"
	@$(BIN)/strait lab exec --run demo cloud-a-pod1 -- dig +noall +answer @172.31.0.1 app.demo.svc.clusterset.local
	@echo
	@echo "one connection from cloud-a-pod1 to app.demo.svc.clusterset.local:80, through every translation, from the kernel's conntrack tables:"
	@$(BIN)/strait lab trace --run demo cloud-a-pod1 app.demo.svc.clusterset.local:80
	@echo
	@echo "onprem's data center is behind a BIRD router (onprem-router). onprem's gateway peers with it over BGP: it learned the"
	@echo "data center's LAN 172.16.10.0/24 through its import filter, refused what is not the site's, and announced the mesh:"
	@$(BIN)/strait status --socket /run/strait/lab/demo/onprem/gateway.sock | sed -n '/bgp:/,/REFUSED/p'
	@echo
	@echo "the router's routes, learned from the gateway through its export filter:"
	@$(BIN)/strait lab exec --run demo onprem-router -- ip route show proto bird
	@echo
	@echo "onprem-dc1 (172.16.10.10, in the data center) reaches the VIP; the clouds reach it, the LAN having joined onprem's CIDRs:"
	@$(BIN)/strait lab connect --run demo -n 10 onprem-dc1 $$($(BIN)/strait lab exec --run demo onprem-pod1 -- dig +short @172.31.0.1 web.default.svc.clusterset.local)
	@$(BIN)/strait lab connect --run demo -n 2 cloud-a-pod1 172.16.10.10
	@$(BIN)/strait lab connect --run demo -n 2 cloud-b-pod1 172.16.10.10
	@echo
	@$(BIN)/strait lab status --run demo | sed -n '/^gateway/,$$p'
	@echo
	@echo "The lab stays up. Explore it:"
	@echo "  $(BIN)/strait lab status                                hosts, addresses, tunnels"
	@echo "  $(BIN)/strait lab exec cloud-a-pod1 -- ping 242.1.1.10   cloud-a's 10.0.1.10 to cloud-b's 10.0.1.10"
	@echo "  $(BIN)/strait lab exec cloud-a-gw -- wg show wg-demo-0   cloud-a's tunnel"
	@echo "  $(BIN)/strait lab exec cloud-b-gw -- nft list table ip strait   cloud-b's translation"
	@echo "  $(BIN)/strait lab exec cloud-b-gw -- conntrack -L        translated flows"
	@echo "  $(BIN)/strait lab exec onprem-gw -- nft list table ip strait-lb   onprem's load balancer (Maglev tables)"
	@echo "  $(BIN)/strait lab connect onprem-pod1 242.255.0.187         connections to the VIP, by backend"
	@echo "  $(BIN)/strait lab trace cloud-a-pod1 app.demo.svc.clusterset.local:80   one connection, hop by hop"
	@echo "  $(BIN)/strait lab kube cloud-b get svc -n demo           cloud-b's cluster (apply -f FILE, get RESOURCE [NAME])"
	@echo "  $(BIN)/strait lab exec cloud-b-node1 -- nft list table ip kube-proxy   kube-proxy's ClusterIPs on a node"
	@echo "  $(BIN)/strait lab exec onprem-router -- birdc -s /run/strait/lab/demo/onprem/bird.ctl show route   BIRD's view"
	@echo "  $(BIN)/strait lab exec onprem-gw -- ip route show proto 242   routes onprem's gateway learned by BGP"
	@echo "  $(BIN)/strait lab exec cloud-b-pod1 -- dig @172.31.0.1 cloud-a-pod1.default.svc.clusterset.local"
	@echo "                                                          cloud-a's service, as cloud-b's gateway learned it"
	@echo "  cat /run/strait/lab/demo/cloud-a/mesh.yaml               all a gateway is told; the rest comes from gossip"
	@echo "  $(BIN)/strait lab wan cloud-b --latency 40ms --loss 1   put cloud-b far away"
	@echo "  $(BIN)/strait lab exec cloud-a-pod1                      a shell in a pod"
	@echo "Tear it down with: $(BIN)/strait lab down"

## test: everything; root-only tests fail rather than skip under CI=true
test: deps build check kube-binaries
	$(GO) test -race -timeout 20m ./...

## kube-binaries: kube-apiserver (tests and lab) and kube-proxy (lab nodes), built from
## k8s.io/kubernetes at the version e2e/kube/apiserver pins, once (minutes the first time), then cached
kube-binaries: build
	@$(BIN)/strait lab kube-apiserver | sed 's/^/kube binary: /'

## check: formatting, vet, go.mod tidiness
check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@cp go.mod /tmp/strait-go.mod.$$$$ && cp go.sum /tmp/strait-go.sum.$$$$ && $(GO) mod tidy && \
		if ! diff -q go.mod /tmp/strait-go.mod.$$$$ >/dev/null || ! diff -q go.sum /tmp/strait-go.sum.$$$$ >/dev/null; then \
			echo "go.mod/go.sum were not tidy (now fixed here; commit them)"; rm -f /tmp/strait-go.*.$$$$; exit 1; fi; \
		rm -f /tmp/strait-go.*.$$$$

## bench: every benchmark
bench: deps build
	@for b in $$($(BIN)/strait bench list); do $(BIN)/strait bench $$b || exit 1; done

## fuzz: run each fuzz target for a while (FUZZTIME, default 30s)
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./gateway/meshconf -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./gateway/siteconf -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./e2e/lab/wanemu -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./e2e/lab -run '^$$' -fuzz FuzzParseReply -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./discovery/dnsserver -run '^$$' -fuzz FuzzServeDNS -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./discovery/catalog -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./gateway/internal/nflog -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) -fuzzminimizetime 5s
	$(GO) test ./gateway/lb/maglev -run '^$$' -fuzz FuzzBuild -fuzztime $(FUZZTIME) -fuzzminimizetime 5s

## generate: rebuild the committed eBPF objects and their Go bindings (Debian's clang, libbpf-dev)
generate:
	@command -v clang >/dev/null && test -e /usr/include/bpf/bpf_helpers.h || { \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends clang libbpf-dev >/dev/null; }
	$(GO) generate ./nodeagent/bpf/

clean:
	rm -rf $(BIN)
