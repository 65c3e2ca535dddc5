//! ringlb: a high-availability L4 TCP load balancer for Linux on io_uring.
//!
//! # Architecture
//!
//! ```text
//!                  control plane                          data path (one per core)
//!   ┌────────────────────────────────────┐      ┌───────────────────────────────────────────┐
//!   │ main.rs: config, signals, preflight│      │ worker N: one io_uring                    │
//!   │ control/: hostcheck, privdrop, pid │      │   SO_REUSEPORT listener ─accept─▶ slab    │
//!   │ reload: SIGHUP ─▶ prober, workers  │      │   small messages: recv/send via a buffer  │
//!   │ health prober thread ──────────────┼─────▶│   client ─splice─▶ pipe ─splice─▶ backend │
//!   │   (single writer of the table)     │ table│   backend ─splice─▶ pipe ─splice─▶ client │
//!   │ admin thread: /metrics /ready /api │(arc- │   sockets and pipes: registered (direct)  │
//!   │   commands ─▶ prober; sums the     │swap) │   descriptors in the ring's file table    │
//!   │   metric blocks ◀──────────────────┼──────┤   counts in its own metric blocks         │
//!   └────────────────────────────────────┘      └───────────────────────────────────────────┘
//! ```
//!
//! - [`datapath`]: per-core workers. Each owns a ring, its listening sockets, a connection slab and
//!   pools of pipes and copy buffers, and shares only the connection counters (for
//!   `max_connections`) with the others. Small messages are copied (recv/send, completed inline),
//!   bulk transfers spliced (io-wq); see `runtime.splice`. A connection's whole life (open,
//!   connect, proxying, replay, teardown) is in `datapath::conn`; one direction's pure state
//!   machine in `datapath::flow`.
//!   It depends on [`config`], [`table`], [`metrics`], [`uring`] and nothing in the control plane.
//! - [`table`]: the backend table, one immutable snapshot behind arc-swap of everything a worker
//!   reads per connection: pools, servers, listener routes, limits, `[runtime]` settings.
//! - [`config`]: TOML -> raw serde structs -> validated typed config, errors as `file:line:col`.
//! - [`balance`]: balancing policies as pure code.
//! - [`control`]: OS plumbing: signals, host checks, privilege drop, the pid file.
//! - [`reload`]: configuration reload, orchestrated next to `main` (prober, then workers).
//! - [`health`]: the health prober, single writer of the table (active checks, passive detection,
//!   operators' drain/disable/enable).
//! - [`metrics`]: every metric name, the counter blocks the workers and the prober write (each
//!   worker in lines of its own), and the Prometheus scrape that sums them.
//! - [`uring`]: io_uring plumbing both the workers and the prober use (ring set-up and its
//!   fallbacks, `user_data` fields, the connect chain); it imports neither.
//! - [`admin`]: the admin API thread on `[admin] bind`: `/metrics`, `/live`, `/ready`, `/api/...`.
//!
//! # Glossary
//!
//! - **client** / **backend**: the two sides of a proxied connection; **c2b** / **b2c** the two
//!   directions, each a [`datapath`] *flow*.
//! - **slot** / **gen**: a connection's index in a worker's slab and the generation that changes
//!   each time the slot is reused.
//! - **direct descriptor**: a socket or pipe that lives only in a ring's registered file table; it
//!   does not count against the process descriptor limit.
//! - **table**: the published backend-table snapshot.

pub mod admin;
pub mod balance;
pub mod config;
pub mod control;
pub mod datapath;
pub mod demo_backend;
pub mod health;
pub mod metrics;
pub mod reload;
pub mod table;
pub mod uring;
