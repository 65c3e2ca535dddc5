//! Balancing policies: pure code, no I/O, no atomics shared across cores.
