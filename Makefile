# Sift. `make run` serves the demo (examples/bootstrap.yaml); `make test` is what CI runs.
GO       ?= go
BIN      := bin
FUZZTIME ?= 30s

.PHONY: all build test run fuzz fuzz-long bench bench-control chaos soak lint proto clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/... ./examples/demo-backends
	$(GO) build -o $(BIN)/plugins/ ./examples/plugins/...

# vet, then every test with the race detector (the bench harness has its own module).
test:
	$(GO) vet ./...
	$(GO) test -race ./...
	@if [ -f bench/go.mod ]; then cd bench && $(GO) vet ./... && $(GO) test -race ./...; fi

# The demo: the backends in the background, sift-proxy in the foreground (Ctrl-C stops both).
run: build
	@$(BIN)/demo-backends & pid=$$!; trap "kill $$pid 2>/dev/null" EXIT INT TERM; \
	$(BIN)/sift-proxy -c examples/bootstrap.yaml -l info

# Every fuzz target in the module, FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$target"; \
	    $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

# Every fuzz target for FUZZ_TIME each (10 minutes unless set); it stops at the first crasher,
# which go test has then written under the package's testdata/fuzz/<target>/: commit it, and
# `make test` replays it as a regression from then on.
FUZZ_TIME ?= 10m
fuzz-long:
	$(MAKE) fuzz FUZZTIME=$(FUZZ_TIME)

bench:
	bash bench/run.sh

# sift-control at scale (test/control_scale_test.go; make test runs it small): 1 000 services and
# 10 000 pods in a real kube-apiserver, 1 000 ADS clients, incremental vs full-snapshot pushes
# (memory, time to every ACK, bytes and nodes per change) in bench/results/control-scale.md.
bench-control:
	@mkdir -p bench/results
	SIFT_CONTROL_SCALE_REPORT=$(CURDIR)/bench/results/control-scale.md $(GO) test -count=1 -timeout 60m -run '^TestControlScale$$' ./test/
	@cat bench/results/control-scale.md

# The chaos suite at full size (test/chaos_test.go; make test runs it small):
# what was tried and what was lost, as a table (bench/results/chaos.md).
chaos:
	@mkdir -p bench/results; rm -f bench/results/chaos.md
	SIFT_CHAOS_REPORT=$(CURDIR)/bench/results/chaos.md $(GO) test -count=1 -timeout 30m -run '^TestChaos' ./test/ -chaos.full
	@cat bench/results/chaos.md

# The soak (test/soak_test.go): the mTLS mesh under mixed traffic for SOAK_DURATION with configuration
# pushes and certificate rotation, goroutines, fds and RSS sampled; report in bench/results/soak.md.
SOAK_DURATION ?= 30m
soak:
	@mkdir -p bench/results
	SIFT_SOAK_DURATION=$(SOAK_DURATION) SIFT_SOAK_REPORT=$(CURDIR)/bench/results/soak.md $(GO) test -count=1 -timeout 0 -run '^TestSoak$$' ./test/
	@cat bench/results/soak.md

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Regenerate Go code for Sift's own protos and the plugin protocol (the output is committed). It
# installs what it needs: protoc from the OS packages (Debian's protobuf-compiler, 3.21) and
# protoc-gen-go at the version go.mod requires, into bin/.
PROTOC_GEN_GO_VERSION := $(shell $(GO) list -m -f '{{.Version}}' google.golang.org/protobuf)
proto:
	@command -v protoc >/dev/null || { echo "installing protoc (protobuf-compiler)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq protobuf-compiler; else sudo apt-get install -y -qq protobuf-compiler; fi; }
	GOBIN=$(CURDIR)/$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	PATH=$(CURDIR)/$(BIN):$$PATH protoc -I api --go_out=api --go_opt=paths=source_relative $$(cd api && find . -name '*.proto' | sed 's|^\./||')

clean:
	rm -rf $(BIN)
