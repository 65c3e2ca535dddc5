//! Every metric ringlb exports, declared once: name, type, labels and help text.
//!
//! The scrape renders only what is declared here, and the README's metric table lists the same
//! names (a test keeps the two in step). Names follow Prometheus conventions: the `ringlb_`
//! prefix, `_total` on counters, base units (`_seconds`, `_bytes`) in the name.

/// What kind of Prometheus metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// With these bucket upper bounds, in microseconds (the `+Inf` bucket is implied).
    Histogram(&'static [u64; HISTOGRAM_BOUNDS]),
}

/// Bucket bounds per histogram (plus `+Inf`): every histogram has as many, so one cell layout fits all.
pub const HISTOGRAM_BOUNDS: usize = 14;

/// One metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    /// Label names, in the order they are rendered.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn counter(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Def {
    Def { name, kind: Kind::Counter, labels, help }
}

const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Def {
    Def { name, kind: Kind::Gauge, labels, help }
}

const fn histogram(
    name: &'static str,
    bounds: &'static [u64; HISTOGRAM_BOUNDS],
    labels: &'static [&'static str],
    help: &'static str,
) -> Def {
    Def { name, kind: Kind::Histogram(bounds), labels, help }
}

const MS: u64 = 1_000;
const S: u64 = 1_000_000;

/// Client connections last from a millisecond (a refused client) to hours (a held session).
pub const CONNECTION_DURATION_BOUNDS: [u64; HISTOGRAM_BOUNDS] =
    [MS, 5 * MS, 10 * MS, 50 * MS, 100 * MS, 500 * MS, S, 5 * S, 10 * S, 30 * S, 60 * S, 300 * S, 1800 * S, 3600 * S];

/// Checks take well under a millisecond on a LAN and up to the check timeout.
pub const CHECK_DURATION_BOUNDS: [u64; HISTOGRAM_BOUNDS] =
    [250, 500, MS, 2500, 5 * MS, 10 * MS, 25 * MS, 50 * MS, 100 * MS, 250 * MS, 500 * MS, S, 2500 * MS, 5 * S];

// ---- per listener ----

pub const LISTENER_ACCEPTED: Def = counter(
    "ringlb_listener_connections_accepted_total",
    &["listener"],
    "Client connections accepted on the listener.",
);

pub const LISTENER_ACTIVE: Def = gauge(
    "ringlb_listener_connections_active",
    &["listener"],
    "Client connections accepted on the listener and not yet closed (including those waiting for a slot \
        under max_connections).",
);

pub const LISTENER_CLOSED: Def = counter(
    "ringlb_listener_connections_closed_total",
    &["listener", "cause"],
    "Client connections closed, by cause: done (both sides finished), no_server, queue_timeout, \
        connect_failed, client_error, backend_error, idle_timeout, shutdown.",
);

pub const LISTENER_ACCEPT_ERRORS: Def = counter(
    "ringlb_listener_accept_errors_total",
    &["listener", "errno"],
    "Failed accepts, by errno (EMFILE, ENFILE, ENOMEM and ENOBUFS pause accepting for 100 ms).",
);

// ---- per server ----

pub const SERVER_ACTIVE: Def =
    gauge("ringlb_server_connections_active", &["pool", "server"], "Proxied connections open to the server.");

pub const SERVER_CONNECTIONS: Def =
    counter("ringlb_server_connections_total", &["pool", "server"], "Connections established to the server.");

pub const SERVER_CONNECT_FAILURES: Def = counter(
    "ringlb_server_connect_failures_total",
    &["pool", "server", "cause"],
    "Failed connects to the server, by cause: refused, timeout, reset, other.",
);

pub const SERVER_RETRIES: Def = counter(
    "ringlb_server_retries_total",
    &["pool", "server"],
    "Connect attempts to the server that retried a client whose connect to another server failed.",
);

pub const SERVER_BYTES: Def = counter(
    "ringlb_server_bytes_total",
    &["pool", "server", "direction"],
    "Bytes delivered through connections to the server, by direction: client_to_backend, \
        backend_to_client.",
);

pub const SERVER_STATE: Def = gauge(
    "ringlb_server_state",
    &["pool", "server", "state"],
    "1 for the server's current state (up, down, draining, disabled), 0 for the others.",
);

pub const SERVER_HEALTHY: Def = gauge(
    "ringlb_server_healthy",
    &["pool", "server"],
    "1 when the health checks say the server is up, whatever an operator set; frozen while disabled.",
);

pub const SERVER_WEIGHT: Def = gauge(
    "ringlb_server_effective_weight",
    &["pool", "server"],
    "The server's weight for new connections: its configured weight while up, else 0.",
);

pub const SERVER_CHECK_DURATION: Def = histogram(
    "ringlb_server_check_duration_seconds",
    &CHECK_DURATION_BOUNDS,
    &["pool", "server"],
    "How long each active health check of the server took (a timed-out check counts its timeout).",
);

pub const SERVER_TRANSITIONS: Def = counter(
    "ringlb_server_health_transitions_total",
    &["pool", "server", "to"],
    "Changes of the server's health (checks or passive detection), by the health entered: up, down.",
);

// ---- per pool ----

pub const POOL_CONNECTION_DURATION: Def = histogram(
    "ringlb_pool_connection_duration_seconds",
    &CONNECTION_DURATION_BOUNDS,
    &["pool"],
    "Lifetime of the pool's client connections, from accept to close.",
);

pub const POOL_QUEUE_WAITS: Def = counter(
    "ringlb_pool_queue_waits_total",
    &["pool"],
    "Clients that waited in the pool's queue because every usable server was at its max_connections.",
);

pub const POOL_QUEUE_TIMEOUTS: Def = counter(
    "ringlb_pool_queue_timeouts_total",
    &["pool"],
    "Clients closed after waiting queue_timeout in the pool's queue without a server.",
);

pub const POOL_ALL_DOWN_CLIENTS: Def = counter(
    "ringlb_pool_all_down_clients_total",
    &["pool", "action"],
    "Clients that arrived while every server of the pool was down, by what they got (on_all_down): \
        rejected, failed_open.",
);

pub const POOL_USABLE_SERVERS: Def = gauge(
    "ringlb_pool_usable_servers",
    &["pool"],
    "Servers of the pool that may take new connections (up, weight above 0).",
);

// ---- process ----

pub const WORKERS: Def = gauge("ringlb_workers", &[], "Data-path worker threads (one io_uring each).");

pub const IOWQ_THREADS: Def = gauge(
    "ringlb_iowq_threads",
    &[],
    "io_uring kernel worker threads (iou-wrk-*) of the process, which run the splices.",
);

pub const DIRECT_DESCRIPTORS: Def = gauge(
    "ringlb_worker_direct_descriptors",
    &["worker"],
    "Registered (direct) descriptors the worker's ring holds: client and backend sockets and pipe ends.",
);

pub const DIRECT_DESCRIPTOR_SLOTS: Def =
    gauge("ringlb_worker_direct_descriptor_slots", &["worker"], "Size of the worker's registered descriptor table.");

pub const CONFIG_RELOADS: Def =
    counter("ringlb_config_reloads_total", &["result"], "Configuration reloads, by result: ok, failed.");

pub const CONFIG_INFO: Def = gauge(
    "ringlb_config_info",
    &["sha256"],
    "Always 1; sha256 is the digest of the configuration file in effect, as sha256sum prints it.",
);

pub const BUILD_INFO: Def = gauge("ringlb_build_info", &["version"], "Always 1; the ringlb version.");

pub const DRAINING: Def = gauge(
    "ringlb_draining",
    &[],
    "1 after POST /api/drain (/ready answers 503 while every connection is still served), else 0.",
);

pub const START_TIME: Def =
    gauge("ringlb_start_time_seconds", &[], "When the process started, in seconds since the Unix epoch.");

/// Every metric, in the order of the README's table.
pub const ALL: &[Def] = &[
    LISTENER_ACCEPTED,
    LISTENER_ACTIVE,
    LISTENER_CLOSED,
    LISTENER_ACCEPT_ERRORS,
    SERVER_ACTIVE,
    SERVER_CONNECTIONS,
    SERVER_CONNECT_FAILURES,
    SERVER_RETRIES,
    SERVER_BYTES,
    SERVER_STATE,
    SERVER_HEALTHY,
    SERVER_WEIGHT,
    SERVER_CHECK_DURATION,
    SERVER_TRANSITIONS,
    POOL_CONNECTION_DURATION,
    POOL_QUEUE_WAITS,
    POOL_QUEUE_TIMEOUTS,
    POOL_ALL_DOWN_CLIENTS,
    POOL_USABLE_SERVERS,
    WORKERS,
    IOWQ_THREADS,
    DIRECT_DESCRIPTORS,
    DIRECT_DESCRIPTOR_SLOTS,
    CONFIG_RELOADS,
    CONFIG_INFO,
    BUILD_INFO,
    DRAINING,
    START_TIME,
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = HashSet::new();
        for def in ALL {
            assert!(seen.insert(def.name), "{} declared twice", def.name);
            assert!(def.name.starts_with("ringlb_"), "{}", def.name);
            assert!(
                def.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                def.name
            );
            let counter = def.kind == Kind::Counter;
            assert_eq!(def.name.ends_with("_total"), counter, "{}: _total on counters only", def.name);
            if let Kind::Histogram(bounds) = def.kind {
                assert!(def.name.ends_with("_seconds"), "{}", def.name);
                assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{}: bounds must increase", def.name);
            }
            assert!(def.help.ends_with('.') && !def.help.contains('\n'), "{}: help", def.name);
            for label in def.labels {
                assert!(!label.is_empty() && *label != "le", "{}: label {label:?}", def.name);
            }
        }
    }
}
