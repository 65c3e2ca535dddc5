# High-availability test targets; the main Makefile pulls them in with `-include tests/ha/ha.mk`.
#
#   make test-ha           as root: two ringlb nodes + keepalived in network namespaces, seven
#                          failure scenarios and a 5-minute soak (~8 minutes); writes
#                          tests/ha/RESULTS.md
#   make test-ha QUICK=1   the same with a 30 s soak and shorter waits (~3 minutes)
#   make test-ha-if-root   test-ha when run as root (CI), a one-line notice otherwise (an error
#                          with CI=true: CI may not pass by skipping)
#
# Needs iproute2 and keepalived (Debian: apt-get install keepalived). HA_SCENARIOS="1 3" runs a
# subset; HA_ADVERT_INT=0.5 overrides the shipped advert_int (for measurements).

HA_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
HA_TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
HA_CARGO ?= cargo

.PHONY: test-ha test-ha-if-root

test-ha:
	$(HA_CARGO) build --release -p ringlb -p ringlb-ha-client
	RINGLB=$(HA_TARGET_DIR)/release/ringlb HA_CLIENT=$(HA_TARGET_DIR)/release/ha-client \
	  QUICK=$(or $(QUICK),0) $(HA_DIR)/run.sh

test-ha-if-root:
	@if [ "$$(id -u)" = 0 ]; then \
	  $(MAKE) --no-print-directory test-ha; \
	elif [ "$${CI:-}" = true ]; then \
	  echo "test-ha: needs root for network namespaces and keepalived; CI=true may not skip" >&2; \
	  exit 1; \
	else \
	  echo "test-ha: skipped (needs root for network namespaces and keepalived)"; \
	fi
