# stagehand: make test runs every test; make demo runs the main job end to end.
# Both install what they need (make deps) on a Debian machine, as root.

export PATH := /usr/local/go/bin:$(PATH)
GO        ?= go
BUILD     := build
FUZZTIME  ?= 30s
CMDS      := stager stagehand-agent

.PHONY: all build image test unit qemu-test crash-campaign demo bench bench-go fuzz deps lint clean tools

all: build

deps:
	@scripts/deps.sh
	@scripts/vm-deps.sh

build:
	@mkdir -p $(BUILD)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BUILD)/ ./cmd/...

# The agent's container image (docs/image.md): stagehand-agent and stager,
# static, with the build machine's CA certificates and a non-root user, for
# linux/amd64 and linux/arm64 in one OCI index, built with
# go-containerregistry (no Docker daemon, no Dockerfile). Reproducible: the
# same tree gives the same digest (every timestamp is SOURCE_DATE_EPOCH, by
# default the last commit's time); labelled with VERSION and the revision.
# Written as an OCI layout to build/image (oci:build/image:VERSION); with
# IMAGE=REF pushed to REF instead, and with SIGN_KEY=cosign.key then signed
# by digest with stager image sign (the password from COSIGN_PASSWORD).
IMAGE     ?=
SIGN_KEY  ?=
IMAGE_PLATFORMS := linux/amd64 linux/arm64
IMAGE_BINARIES  := stagehand-agent stager
image:
	@scripts/deps.sh image
	@set -e; rm -rf $(BUILD)/image $(BUILD)/image-bin; args=; \
	for p in $(IMAGE_PLATFORMS); do \
	  dir=$(BUILD)/image-bin/$${p%/*}-$${p#*/}; files=; \
	  for c in $(IMAGE_BINARIES); do \
	    echo "image: building $$c for $$p"; \
	    CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -trimpath -ldflags='-s -w' -o $$dir/$$c ./cmd/$$c; \
	    files=$${files:+$$files,}$$dir/$$c; \
	  done; \
	  args="$$args -platform $$p=$$files"; \
	done; \
	export SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct)}; \
	set -- $$args -version $$(cat VERSION) -revision $$(git rev-parse HEAD) -entrypoint /usr/bin/stagehand-agent; \
	if [ -z "$(IMAGE)" ]; then \
	  $(GO) run ./agentimage/cmd/build-agent-image "$$@" -layout $(BUILD)/image; \
	else \
	  ref=$$($(GO) run ./agentimage/cmd/build-agent-image "$$@" -push $(IMAGE)); \
	  if [ -n "$(SIGN_KEY)" ]; then $(GO) run ./cmd/stager image sign --key $(SIGN_KEY) $$ref; fi; \
	fi

# Every test: unit tests (loop devices need root), then the VM tests (real
# OVMF, systemd-boot and Debian kernels under QEMU).
test: deps lint unit qemu-test

# The real kube-apiserver (v1.37.2) and etcd (v3.7.3) the fleet tests run,
# built once into $$HOME/.cache/stagehand/tools keyed by tools/*/go.sum: cold
# about 5 and 1.5 minutes on 2 idle cores (the apiserver peaks at 2.7 GB),
# nothing when cached. Both at once: the cores are shared either way.
tools:
	@GO=$(GO) tools/build.sh etcd >/dev/null & e=$$!; GO=$(GO) tools/build.sh kube-apiserver >/dev/null; k=$$?; wait $$e && exit $$k

# -timeout: the cosign interop test (cmd/stager) builds cosign the first
# time, about 4 minutes on 2 cores with a cold module cache.
unit: tools
	$(GO) test -count=1 -timeout 30m ./...

# The VM tests run in as many lanes as the machine has guest slots (one a
# core: a TCG guest keeps one busy; qemu-tests/vm), each lane a sequence of
# go test processes, the tests dealt to the lanes by their durations
# (qemu-tests/vmsuite/durations.txt, then this machine's last run in
# build/qemu-test). It prints go test's lines for each package and the ten
# slowest tests; any failure fails the target.
qemu-test: deps
	@scripts/vm-guests.sh
	$(GO) vet -tags vm ./qemu-tests/... ./grub/... ./bootdisk
	$(GO) run ./qemu-tests/vmsuite -out $(BUILD)/qemu-test

# The large crash-state campaign (issue 14): every scenario of the
# simulated machine recorded, up to 100 prefixes, 80 random subsets and 60
# torn writes per epoch segment (make unit runs 2, 4 and 4), each state
# booted and checked; CRASHSEED picks the random ones (the seed is printed).
# Failing states are saved in build/crash-failed (regression inputs).
CRASHSEED ?= 1
# Then the VM recording (TestCrashStatesVM): more of its states checked,
# and every epoch's worst state booted for real under OVMF (about a minute
# and a half each under TCG).
crash-campaign: deps
	$(GO) test -count=1 -timeout 120m -v -run 'TestCampaign$$' ./qemu-tests/crashstate \
	  -crash.large -crash.seed $(CRASHSEED) -crash.keep $(CURDIR)/$(BUILD)/crash-failed
	$(GO) test -tags vm -count=1 -timeout 120m -v -run 'TestCrashStatesVM$$' ./qemu-tests/ -crash.vmlarge

# The main job end to end on the real systemd OS (qemu-tests/realos, built
# from Debian packages with mmdebstrap and cached under build/realos): stage
# v2 from Debian's docker-registry on 127.0.0.1, boot the disk under QEMU,
# watch v2 applied, kexec'd, health-checked and confirmed; then v3, whose
# required health check fails, tried and rolled back. Logs in build/demo/.
# BOOTLOADER=grub-bios tells the same story on a legacy BIOS (SeaBIOS) with
# GRUB, grub-efi on UEFI with GRUB.
BOOTLOADER ?= systemd-boot
demo: deps build
	@scripts/deps.sh demo
	@scripts/vm-guests.sh
	$(GO) run ./qemu-tests/demo -root . -out $(BUILD)/demo -bootloader $(BOOTLOADER)

# Measures stagehand against baselines run in the same invocation and
# against its budgets: Go benchmarks on the host, boots under QEMU (OVMF,
# systemd-boot, Debian kernels). Writes build/bench/report.md and
# report.json; fails when a budget is missed. 6-13 minutes here, and about
# 6 more for the real OS's boots (part realos: 3 boots with and 3 without
# prestage; -realos-boots N).
bench: deps
	@scripts/vm-guests.sh
	$(GO) run ./qemu-tests/bench -root . -out $(BUILD)/bench $(BENCHFLAGS)

# Every Go benchmark, once, without budgets.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Runs every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | cut -d' ' -f2); do \
	    echo "fuzz: $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out" >&2; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BUILD)
