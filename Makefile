# ringlb: build, run a demo, test and lint.
#
#   make build   release build
#   make run     two demo backends on 127.0.0.1:9001/9002 and ringlb in front (Ctrl-C stops all)
#   make test    every test of the workspace, release build (and, as root, tests/ha/)
#   make lint    rustfmt check and clippy with warnings denied
#   make clean   remove build output

SHELL := bash
CARGO ?= cargo
CONFIG ?= conf/ringlb.toml
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
RINGLB := $(TARGET_DIR)/release/ringlb

.PHONY: all build run test lint clean

all: build

build:
	$(CARGO) build --release

# The backends are killed however ringlb ends (exit, error or Ctrl-C): the EXIT trap runs in
# every case, and INT/TERM turn into an exit so that it does.
run: build
	@set -euo pipefail; \
	pids=(); \
	cleanup() { kill "$${pids[@]}" 2>/dev/null || true; wait "$${pids[@]}" 2>/dev/null || true; }; \
	trap cleanup EXIT; \
	trap 'exit 130' INT TERM; \
	"$(RINGLB)" demo-backend --bind 127.0.0.1:9001 --name demo1 & pids+=($$!); \
	"$(RINGLB)" demo-backend --bind 127.0.0.1:9002 --name demo2 & pids+=($$!); \
	"$(RINGLB)" run -c "$(CONFIG)"

# As root (CI is), the high-availability scenarios too (tests/ha/, ~8 minutes); both parts run
# whatever the other's outcome.
test:
	@rc=0; \
	$(CARGO) test --workspace --release --no-fail-fast || rc=$$?; \
	$(MAKE) --no-print-directory test-ha-if-root || rc=$$?; \
	exit $$rc

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean

# More targets (bench, test-ha, tune-apply, ...) live next to what they drive.
-include bench/bench.mk
-include tuning/tuning.mk
-include tests/ha/ha.mk
