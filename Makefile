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
	dnsperf:dnsperf bind9-dnsutils:dig prometheus:promtool chromium:chromium
# Debian packages whose files are not in PATH, and a file of each.
DEB_FILES := containernetworking-plugins:/usr/lib/cni/bridge

.PHONY: all build deps demo test check kube-apiserver bench fuzz generate clean

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

## demo: the merger topology with everything working
demo: deps build
	@$(BIN)/strait lab down --run demo >/dev/null
	@$(BIN)/strait lab up --run demo --topology merger
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
	@echo "  $(BIN)/strait lab exec cloud-b-pod1 -- dig @172.31.0.1 cloud-a-pod1.default.svc.clusterset.local"
	@echo "                                                          cloud-a's service, as cloud-b's gateway learned it"
	@echo "  cat /run/strait/lab/demo/cloud-a/mesh.yaml               all a gateway is told; the rest comes from gossip"
	@echo "  $(BIN)/strait lab wan cloud-b --latency 40ms --loss 1   put cloud-b far away"
	@echo "  $(BIN)/strait lab exec cloud-a-pod1                      a shell in a pod"
	@echo "Tear it down with: $(BIN)/strait lab down"

## test: everything; root-only tests fail rather than skip under CI=true
test: deps build check kube-apiserver
	$(GO) test -race -timeout 20m ./...

## kube-apiserver: the tests' API server, built from k8s.io/kubernetes at the version
## e2e/kube/apiserver pins, once (minutes the first time), then cached
kube-apiserver: build
	@echo "kube-apiserver for the tests: $$($(BIN)/strait lab kube-apiserver)"

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
