# Load benchmarks: ringlb beside HAProxy, nginx stream and the direct path (bench/run.sh).
# Included from the main Makefile with `-include bench/bench.mk`.
#   make bench                  full run (about 10 minutes on 2 cores), bench/results/latest.md
#   make bench QUICK=1          smoke run of well under a minute (CI)
#   make bench REQUIRE="direct haproxy haproxy-splice nginx ringlb"   fail unless ringlb works too
# Every variable documented at the top of bench/run.sh may be given the same way.

BENCH_VARS := QUICK ROUNDS STRESS_ROUNDS TARGETS WORKLOADS RATES REQUIRE BACKEND OUT KEEP NO_BUILD NO_INSTALL

.PHONY: bench
bench:
	$(foreach v,$(BENCH_VARS),$(if $(filter-out undefined,$(origin $(v))),$(v)="$($(v))")) bench/run.sh
