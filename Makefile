# keybroker build. Tool versions are pinned in go.mod (the `tool` block) and
# protoc comes from Debian's protobuf-compiler package (libprotoc 3.21.12).

GO        ?= go
BIN       := $(CURDIR)/bin
TOOLBIN   := $(CURDIR)/.bin
PROTOS    := $(wildcard proto/keybroker/v1/*.proto)
BENCHTIME ?= 2s
FUZZTIME  ?= 10s
# The fuzzer minimizes every new interesting input for up to this long, without
# counting it as progress (golang/go#51484); the default 60s would eat a brief run.
FUZZMINIMIZETIME ?= 5s

# Fuzz targets run by `make fuzz`, one `FUZZ_TARGETS += package:FuzzName` line each.
FUZZ_TARGETS :=
FUZZ_TARGETS += ./policies:FuzzParse
FUZZ_TARGETS += ./broker/verify:FuzzEventLog

.PHONY: help all build test unit e2e e2e-vault bench fuzz demo lint generate generate-check tidy clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

all: build test ## build and run every test

build: ## build bin/keybroker, bin/keybroker-agent and bin/vault-plugin-auth-tpm
	$(GO) build -o $(BIN)/ ./cmd/...
	cd plugins/vaultauth && $(GO) build -o $(BIN)/ ./cmd/...

test: lint generate-check ## every test: lint, generated code, unit (simulator), e2e (swtpm, tpm2-tools), Vault plugin and Vault e2e, brief fuzzing
	$(GO) test -count=1 -timeout 20m ./...
	cd plugins/vaultauth && $(GO) test -count=1 -timeout 10m ./...
	$(MAKE) --no-print-directory e2e-vault
	$(MAKE) --no-print-directory fuzz FUZZTIME=5s

e2e-vault: ## Vault suite: a Vault 1.19.5 test cluster, the auth plugin and keybroker-agent on swtpm (own module; first build ~6 min)
	cd e2e/vault && $(GO) test -count=1 -timeout 20m ./...

unit: ## unit tests only (no swtpm needed)
	$(GO) test -count=1 -short ./...

e2e: ## the cross-process suite on swtpm (needs swtpm, swtpm-tools, tpm2-tools)
	$(GO) test -count=1 -v -timeout 15m ./e2e/...

bench: ## benchmarks: crypto floor vs the attest+release pipeline
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem ./broker/

fuzz: ## run each of FUZZ_TARGETS for FUZZTIME (default 10s; `make test` runs each for 5s)
	@set -e; for target in $(FUZZ_TARGETS); do \
	  pkg=$${target%%:*}; name=$${target#*:}; \
	  cmd="$(GO) test -run ^\$$ -fuzz ^$$name\$$ -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg"; \
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
