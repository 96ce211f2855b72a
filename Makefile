# One entry point for hygiene: make fmt lint test bench demo.
# `make test` sets up what it needs (scripts/setup.sh) and runs gofmt,
# go vet, staticcheck, govulncheck and go test -race ./... .
GO       ?= go
BIN      := bin/veil
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  := -s -w -X github.com/veil-tee/veil/internal/cli.version=$(VERSION) -X github.com/veil-tee/veil/internal/cli.commit=$(COMMIT)
BENCHTIME ?= 1x
# go.mod pins the toolchain (security fixes of the standard library); let
# go fetch it through the module proxy where the installed Go is older.
export GOTOOLCHAIN ?= auto

.PHONY: all build setup test fmt lint vet vulncheck bench bench-spark demo spark-demo clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/veil

# Debian packages the tests and examples need, installed if missing.
setup:
	./scripts/setup.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) tool staticcheck ./...
	./scripts/vulncheck.sh

vet:
	$(GO) vet ./...

vulncheck:
	./scripts/vulncheck.sh

test: setup lint build
	# Built once per machine, cached: deploy/validate and
	# internal/sparkcluster's TestKubernetes run the real API server.
	./scripts/kube-apiserver.sh >/dev/null
	$(GO) test -race -count=1 -timeout 20m ./...
	# The sealed-file and sealed-mount benchmarks, once each on small
	# inputs: they keep compiling and working (no time is asserted).
	VEIL_BENCH_FILE_MIB=8 $(GO) test -count=1 -run '^$$' -bench . -benchtime $(BENCHTIME) ./seal
	VEIL_BENCH_FILE_MIB=8 $(GO) test -count=1 -run '^$$' -bench 'Mount$$' -benchtime $(BENCHTIME) ./fusefs
	cd deploy/validate && $(GO) test -count=1 -timeout 10m ./...

# Benchmarks: results go to docs/performance.md (see scripts/bench.sh).
bench: setup build
	./scripts/bench.sh

# Spark TPC-H alone (make bench runs it too): SF=0.1 RUNS=1 for a quick run.
bench-spark: setup build
	./scripts/bench-spark.sh

demo: setup build
	./scripts/demo.sh

# A Spark cluster of veil instances on network-namespace hosts (root);
# QUERIES=all runs TPC-H's 22 queries.
spark-demo: setup build
	./scripts/spark-demo.sh

clean:
	rm -rf bin
