# keybroker build. Tool versions are pinned in go.mod (the `tool` block) and
# protoc comes from Debian's protobuf-compiler package (libprotoc 3.21.12).

GO        ?= go
BIN       := $(CURDIR)/bin
TOOLBIN   := $(CURDIR)/.bin
PROTOS    := $(wildcard proto/keybroker/v1/*.proto proto/keybroker/store/v1/*.proto)
BENCHTIME ?= 2s
# FUZZTIME, when set, bounds every fuzz target: a count of inputs (`200000x`)
# or a duration (`5m`). Unset, each target runs the count next to it below,
# about five seconds on a 2-core machine. Counts are the default because Go
# 1.26's fuzz coordinator can fail a duration-bounded run with a spurious
# "context deadline exceeded" as the duration ends (golang/go#75804).
FUZZTIME  ?=
# The fuzzer minimizes every new interesting input for up to this long, without
# counting it as progress (golang/go#51484); the default 60s would eat a brief run.
FUZZMINIMIZETIME ?= 5s

# Fuzz targets run by `make fuzz`, one `FUZZ_TARGETS += package:FuzzName:count`
# line each; the count is the target's brief run (inputs, not seconds).
FUZZ_TARGETS :=
FUZZ_TARGETS += ./policies:FuzzParse:5000
FUZZ_TARGETS += ./broker/verify:FuzzEventLog:15000
FUZZ_TARGETS += ./broker/verify:FuzzNode:15000
FUZZ_TARGETS += ./broker/verify:FuzzQuoteAttest:12000
FUZZ_TARGETS += ./broker/verify:FuzzQuoteSignature:40000
FUZZ_TARGETS += ./broker/verify:FuzzResidentCertify:12000
FUZZ_TARGETS += ./broker/verify:FuzzWire:40000
FUZZ_TARGETS += ./broker:FuzzAttest:15000
FUZZ_TARGETS += ./broker:FuzzLoadConfig:2000
FUZZ_TARGETS += ./broker/verify/tcglog:FuzzParse:15000
FUZZ_TARGETS += ./broker/issue:FuzzLeafTBS:20000

.PHONY: help all build test test-etcd unit e2e e2e-vault e2e-kubernetes bench sizing fuzz demo lint generate generate-check tidy clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

all: build test ## build and run every test

build: ## build bin/keybroker, bin/keybroker-agent and bin/vault-plugin-auth-tpm
	$(GO) build -o $(BIN)/ ./cmd/...
	cd plugins/vaultauth && $(GO) build -o $(BIN)/ ./cmd/...

test: lint generate-check ## every test: lint, generated code, unit (simulator), e2e (swtpm, tpm2-tools, etcd), the same on the etcd store, Vault plugin and Vault e2e, Kubernetes e2e, brief fuzzing
	$(GO) test -count=1 -timeout 20m ./...
	$(MAKE) --no-print-directory test-etcd
	cd plugins/vaultauth && $(GO) test -count=1 -timeout 10m ./...
	$(MAKE) --no-print-directory e2e-vault
	$(MAKE) --no-print-directory e2e-kubernetes
	$(MAKE) --no-print-directory fuzz FUZZTIME=

test-etcd: ## the broker and e2e suites again, on the etcd store (a real etcd server per test; needs etcd-server)
	KEYBROKER_TEST_STORE=etcd $(GO) test -count=1 -timeout 20m ./broker/ ./e2e/

e2e-vault: ## Vault suite: a Vault 1.19.5 test cluster, the auth plugin and keybroker-agent on swtpm (own module; first build ~6 min)
	cd e2e/vault && $(GO) test -count=1 -timeout 20m ./...

# The Kubernetes control plane the Kubernetes suite runs, built once from the
# module proxy (module e2e/kube) into a cache outside the clone.
KUBE_VERSION ?= v1.37.2
KUBE_BIN     ?= $(HOME)/.cache/keybroker/kube-$(KUBE_VERSION)
KUBE_LDFLAGS  = -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37

$(KUBE_BIN)/kube-apiserver:
	@echo "building kube-apiserver $(KUBE_VERSION) into $(KUBE_BIN) (once; 15-20 minutes on 2 cores)"
	@mkdir -p $(KUBE_BIN)
	cd e2e/kube && $(GO) build -ldflags "$(KUBE_LDFLAGS)" -o $(KUBE_BIN)/kube-apiserver.tmp k8s.io/kubernetes/cmd/kube-apiserver
	mv $(KUBE_BIN)/kube-apiserver.tmp $@

$(KUBE_BIN)/kube-controller-manager:
	@echo "building kube-controller-manager $(KUBE_VERSION) into $(KUBE_BIN) (once; a few minutes after kube-apiserver)"
	@mkdir -p $(KUBE_BIN)
	cd e2e/kube && $(GO) build -ldflags "$(KUBE_LDFLAGS)" -o $(KUBE_BIN)/kube-controller-manager.tmp k8s.io/kubernetes/cmd/kube-controller-manager
	mv $(KUBE_BIN)/kube-controller-manager.tmp $@

e2e-kubernetes: $(KUBE_BIN)/kube-apiserver $(KUBE_BIN)/kube-controller-manager ## Kubernetes suite: a real kube-apiserver and kube-controller-manager on etcd, the broker and the agent on swtpm (first build ~20 min)
	KEYBROKER_KUBE_APISERVER=$(KUBE_BIN)/kube-apiserver KEYBROKER_KUBE_CONTROLLER_MANAGER=$(KUBE_BIN)/kube-controller-manager \
	  $(GO) test -count=1 -v -timeout 10m -run '^TestKubernetes' ./e2e/

unit: ## unit tests only (no swtpm needed)
	$(GO) test -count=1 -short ./...

e2e: ## the cross-process suite on swtpm (needs swtpm, swtpm-tools, tpm2-tools)
	$(GO) test -count=1 -v -timeout 15m ./e2e/...

bench: ## benchmarks: crypto floor vs the attest+release pipeline
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem ./broker/

sizing: ## store space per node and per receipt, bolt and etcd: 10,000 nodes, 100,000 receipts (several minutes)
	KEYBROKER_SIZING=1 $(GO) test -count=1 -v -timeout 30m -run '^TestSizing$$' ./broker/store/

fuzz: ## run each of FUZZ_TARGETS: its own brief count of inputs, or FUZZTIME (e.g. FUZZTIME=500000x, FUZZTIME=5m)
	@set -e; for target in $(FUZZ_TARGETS); do \
	  pkg=$${target%%:*}; rest=$${target#*:}; name=$${rest%%:*}; count=$${rest#*:}; \
	  budget="$(FUZZTIME)"; [ -n "$$budget" ] || budget="$${count}x"; \
	  cmd="$(GO) test -run ^\$$ -fuzz ^$$name\$$ -fuzztime $$budget -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg"; \
	  echo "$$cmd"; $$cmd; \
	done

demo: build ## one-command demo on the embedded TPM simulator
	$(BIN)/keybroker demo

lint: ## gofmt + go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd plugins/vaultauth && $(GO) vet ./...
	cd e2e/vault && $(GO) vet ./...

$(TOOLBIN)/protoc-gen-go $(TOOLBIN)/protoc-gen-go-grpc: go.mod
	$(GO) build -o $(TOOLBIN)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc

generate: $(TOOLBIN)/protoc-gen-go $(TOOLBIN)/protoc-gen-go-grpc ## regenerate proto code
	protoc -I proto \
	  --plugin=protoc-gen-go=$(TOOLBIN)/protoc-gen-go \
	  --plugin=protoc-gen-go-grpc=$(TOOLBIN)/protoc-gen-go-grpc \
	  --go_out=. --go_opt=module=github.com/keybroker/keybroker \
	  --go-grpc_out=. --go-grpc_opt=module=github.com/keybroker/keybroker \
	  $(patsubst proto/%,%,$(PROTOS))

generate-check: generate ## fail if generated code is not what is committed
	@git diff --exit-code -- proto/ || (echo "generated code differs: run make generate and commit"; exit 1)

tidy: ## go mod tidy, in every module
	$(GO) mod tidy
	cd plugins/vaultauth && $(GO) mod tidy
	cd e2e/vault && $(GO) mod tidy -e

clean:
	rm -rf $(BIN) $(TOOLBIN)

# Release: static (CGO_ENABLED=0), stamped, reproducible binaries in DIST with
# SHA256SUMS. Without cgo the embedded TPM simulator is left out: `--tpm
# simulator` and `keybroker demo` fail with "using the simulator requires
# building with CGO"; real TPMs (/dev/tpmrm0) and swtpm (tcp://) work. The same
# sources, Go toolchain and VERSION/REVISION give byte-identical binaries.
ifeq ($(origin VERSION),undefined)
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
endif
ifeq ($(origin REVISION),undefined)
REVISION := $(shell git rev-parse HEAD 2>/dev/null)
endif
DIST              ?= $(CURDIR)/dist
RELEASE_PLATFORMS ?= linux/amd64 linux/arm64
RELEASE_CMDS      ?= keybroker keybroker-agent vault-plugin-auth-tpm
RELEASE_LDFLAGS   := -s -w -buildid= -X github.com/keybroker/keybroker/internal/version.Version=$(VERSION) -X github.com/keybroker/keybroker/internal/version.Revision=$(REVISION)
RELEASE_ENV       := CGO_ENABLED=0 GOFLAGS= GOAMD64=v1 GOARM64=v8.0
CONTAINER_TOOL    ?= $(firstword $(foreach t,podman docker,$(shell command -v $(t) 2>/dev/null)))

.PHONY: release release-check container container-agent

release: ## static, stamped, reproducible binaries for RELEASE_PLATFORMS in dist/, with SHA256SUMS
	@set -e; dist=$(abspath $(DIST)); mkdir -p $$dist; rm -f $$dist/SHA256SUMS; built=; \
	for p in $(RELEASE_PLATFORMS); do os=$${p%/*}; arch=$${p#*/}; \
	  for c in $(RELEASE_CMDS); do \
	    dir=.; [ $$c != vault-plugin-auth-tpm ] || dir=plugins/vaultauth; \
	    out=$${c}_$${os}_$${arch}; echo "release $$out $(VERSION)"; \
	    (cd $$dir && $(RELEASE_ENV) GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -buildvcs=false \
	      -ldflags "$(RELEASE_LDFLAGS)" -o $$dist/$$out ./cmd/$$c); \
	    built="$$built $$out"; \
	  done; \
	done; \
	cd $$dist && sha256sum $$built > SHA256SUMS && cat SHA256SUMS

release-check: ## build the release twice (the second with an empty build cache) and compare SHA256SUMS
	@set -e; a=$$(mktemp -d); b=$$(mktemp -d); cache=$$(mktemp -d); \
	trap 'chmod -R u+w $$cache; rm -rf $$a $$b $$cache' EXIT; \
	$(MAKE) --no-print-directory release DIST=$$a VERSION=$(VERSION) REVISION=$(REVISION) >/dev/null; \
	GOCACHE=$$cache $(MAKE) --no-print-directory release DIST=$$b VERSION=$(VERSION) REVISION=$(REVISION) >/dev/null; \
	if diff $$a/SHA256SUMS $$b/SHA256SUMS; then echo "release-check: reproducible"; cat $$a/SHA256SUMS; \
	else echo "release-check: the two builds differ"; exit 1; fi

container: ## the broker's container image from packaging/Containerfile (podman or docker)
	@if [ -z "$(CONTAINER_TOOL)" ]; then \
	  echo "container: neither podman nor docker is installed; install one to build packaging/Containerfile"; exit 1; fi
	$(CONTAINER_TOOL) build -f packaging/Containerfile \
	  --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t keybroker:$(VERSION) .

container-agent: ## the agent's container image (the DaemonSet of deploy/kubernetes), stage agent of packaging/Containerfile
	@if [ -z "$(CONTAINER_TOOL)" ]; then \
	  echo "container-agent: neither podman nor docker is installed; install one to build packaging/Containerfile"; exit 1; fi
	$(CONTAINER_TOOL) build -f packaging/Containerfile --target agent \
	  --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t keybroker-agent:$(VERSION) .
