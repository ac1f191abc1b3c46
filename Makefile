# anycastd build, test and lab targets. See README.md.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# Lab tests are ordinary Go tests that skip unless ANYCASTD_LAB=1 and root.
LABENV  := ANYCASTD_LAB=1
FUZZTIME ?= 30s

.PHONY: all build test unit lab-test bench lab lab-vm soak lint fuzz images clean

all: build

## build: static binaries into bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/anycastd ./cmd/anyctl

## test: everything CI runs: lint, unit tests, lab tests (root)
test: lint unit lab-test

## unit: the unit tests, with the race detector (most packages run
## goroutines); no root, no network beyond loopback
unit:
	$(GO) test -race -count=1 ./...

## lab-test: tests in network namespaces and the qemu VM (root)
lab-test: build
	@if [ "$$(id -u)" != 0 ]; then echo "lab-test needs root (network namespaces, qemu)"; exit 1; fi
	$(LABENV) $(GO) test -count=1 -p 1 -timeout 60m -run 'Lab' ./...

## soak: the whole tier on Debian's kernel under a seeded storm of faults
## (labs/soak); SEED and DURATION (per routing setup) choose the run,
## ROUTING the setups (bgp, ospf-table, ospf-iface; comma-separated), KINDS
## the fault kinds (comma-separated, default all; LOGS=1 prints the
## daemons' logs after the report, LOGS=debug at debug level with
## memberlist's lines), the report is printed, and any
## invariant violation fails it. make test runs a short one (seed 1, 75 s
## per setup).
SEED     ?= 1
DURATION ?= 5m
ROUTING  ?= bgp,ospf-table,ospf-iface
KINDS    ?=
LOGS     ?=
soak: build
	@if [ "$$(id -u)" != 0 ]; then echo "soak needs root (qemu, namespaces inside the VM)"; exit 1; fi
	SOAK_SEED=$(SEED) SOAK_DURATION=$(DURATION) SOAK_ROUTING=$(ROUTING) SOAK_KINDS=$(KINDS) SOAK_LOGS=$(LOGS) $(LABENV) $(GO) test -count=1 -timeout 0 -run '^TestLabSoak$$' -v ./labs/soak

## bench: benchmarks, the lab's measurement report and a 30-minute soak
## into docs/benchmarks.md (BENCH=soak: only the soak, only its section)
bench: build
	@bash labs/bench.sh

## lab: the demo (main job)
lab: build
	@bash labs/demo.sh

## lab-vm: the IPVS packet-path demo in a qemu VM with Debian's kernel
lab-vm: build
	@bash labs/demo-vm.sh

## lint: gofmt check and go vet
lint:
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './labs/.cache/*')); \
	if [ -n "$$out" ]; then echo "not gofmt-formatted:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## fuzz: each fuzz target for FUZZTIME
fuzz:
	$(GO) test ./configs -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) -fuzzminimizetime 2s
	$(GO) test ./configs -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) -fuzzminimizetime 2s
	$(GO) test ./routing/vrrp -run '^$$' -fuzz FuzzUnmarshal -fuzztime $(FUZZTIME) -fuzzminimizetime 2s

## images: the anycastd image and the containerlab lab images (docker, podman or buildah)
images:
	VERSION=$(VERSION) bash labs/images/build.sh

## clean: remove build output and lab caches
clean:
	rm -rf $(BIN) labs/.cache
