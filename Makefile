# One entry point for hygiene: make fmt lint test bench demo.
GO       ?= go
BIN      := bin/veil
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  := -s -w -X github.com/veil-tee/veil/internal/cli.version=$(VERSION) -X github.com/veil-tee/veil/internal/cli.commit=$(COMMIT)
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(shell $(GO) env GOPATH)/bin/staticcheck)
BENCHTIME ?= 1x

.PHONY: all build test fmt lint vet bench demo clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/veil

fmt:
	gofmt -w $$(git ls-files '*.go')

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(STATICCHECK) ./...

vet:
	$(GO) vet ./...

test: lint build
	$(GO) test -race -count=1 -timeout 15m ./...

# Benchmarks: results go to docs/performance.md (see scripts/bench.sh).
bench: build
	./scripts/bench.sh

demo: build
	./scripts/demo.sh

clean:
	rm -rf bin
