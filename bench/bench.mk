# Load benchmarks: ringlb beside HAProxy, nginx stream and the direct path (bench/run.sh).
# Included from the main Makefile with `-include bench/bench.mk`.
#   make bench                  full run (about 7-9 minutes on 2 cores), bench/results/latest.md
#   make bench QUICK=1          smoke run of about 30 seconds (CI)
#   make bench REQUIRE="direct haproxy haproxy-splice nginx ringlb"   fail unless ringlb works too
# The variables documented at the top of bench/run.sh are read from the environment; make
# exports the ones given on its command line, so they may be passed as above.

.PHONY: bench
bench:
	bench/run.sh
