//! Host preflight: does this host have the limits and kernel features a given load needs?
//!
//! Owns the arithmetic that turns `max_connections` and `workers` into needed kernel settings,
//! the comparison with the live values, and the report (`ringlb check --host`, start-up warnings).
//! It only reads: it never writes a sysctl or a limit, except [`raise_nofile_limit`], which lifts
//! this process's own soft descriptor limit to its hard limit when asked to.
//!
//! The live values are read (module `live`, io_uring probes in `uring`) into a [`HostSnapshot`];
//! [`evaluate`] is pure, so every rule is unit-tested with fixed inputs. tuning/README.md explains
//! the same arithmetic for humans.
//!
//! The check describes the process it runs in: its limits, its capabilities (root is never
//! short of locked memory). At start-up, call it after dropping privileges.

mod live;
mod report;
#[cfg(test)]
mod tests;
mod uring;

pub use live::{parse_port_range, raise_nofile_limit, KernelVersion, Rlimit};
pub use report::{HostReport, Row, Severity};
pub use uring::{FeatureFact, Method, UringFacts};

/// Sockets per proxied connection: the client's and the backend's.
pub const SOCKETS_PER_CONNECTION: u64 = 2;
/// Descriptors per pipe (read and write end), held only while bytes are in flight.
pub const DESCRIPTORS_PER_PIPE: u64 = 2;
/// One pipe per this many connections of a worker may hold bytes at once: an upper estimate
/// for the pipe pool until `make bench` measures the real share (see tuning/README.md).
pub const CONNECTIONS_PER_PIPE: u64 = 4;
/// Spare registered-descriptor slots per ring: listeners installed in the table, and headroom
/// for a connection whose slots are being released while a new one arrives.
pub const RING_SPARE_SLOTS: u64 = 64;
/// Ordinary descriptors of the process: listeners, rings, eventfds, admin API, logs, reload.
pub const ORDINARY_DESCRIPTORS: u64 = 256;
/// The kernel's cap on one ring's registered file table (`IORING_MAX_FIXED_FILES`, 1 << 20).
pub const IORING_MAX_FIXED_FILES: u64 = 1 << 20;
/// Submission entries per worker ring assumed for the locked-memory estimate.
pub const DEFAULT_RING_ENTRIES: u32 = 4096;
/// Pages of a pipe at its default size (`PIPE_DEF_BUFFERS`); what `pipe-user-pages-soft` counts.
pub const PIPE_DEFAULT_PAGES: u64 = 16;
/// Floor for the listen backlog: the kernel's own default for `somaxconn` since 5.4.
pub const MIN_LISTEN_BACKLOG: u64 = 4096;
/// Room in the accept queue for this fraction (1/N) of a worker's connections: a reconnect
/// storm after a failover brings them back within a second or so; syncookies cover overflow.
pub const ACCEPT_QUEUE_SHARE: u64 = 8;
/// Page size assumed when converting pages to bytes.
const PAGE_SIZE: u64 = 4096;
/// Minimum receive plus send buffer of one socket (`tcp_rmem[0] + tcp_wmem[0]` in every
/// profile and by default): what the kernel still grants each socket under memory pressure.
pub const SOCKET_MIN_BUFFER_BYTES: u64 = 4096 + 4096;

/// The load the host is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLoad {
    /// Process-wide concurrent client connections (`[runtime] max_connections`).
    pub max_connections: u64,
    /// Worker threads, one io_uring each (`[runtime] workers`, resolved).
    pub workers: usize,
    /// Pipes a worker may hold at once (both directions together).
    pub pipes_per_worker: u64,
    /// Submission entries of each worker's ring.
    pub ring_entries: u32,
    /// Distinct (source address, backend address) pairs, when known; each has its own
    /// ephemeral port range.
    pub backend_pairs: Option<u64>,
}

impl HostLoad {
    /// The load with the default estimates for pipes and ring size, and unknown backends.
    pub fn new(max_connections: u64, workers: usize) -> HostLoad {
        let workers = workers.max(1);
        let per_worker = max_connections.div_ceil(workers as u64);
        HostLoad {
            max_connections,
            workers,
            pipes_per_worker: per_worker.div_ceil(CONNECTIONS_PER_PIPE),
            ring_entries: DEFAULT_RING_ENTRIES,
            backend_pairs: None,
        }
    }

    fn workers(&self) -> u64 {
        self.workers.max(1) as u64
    }

    /// Connections one worker (one ring) holds at full load.
    pub fn connections_per_worker(&self) -> u64 {
        self.max_connections.div_ceil(self.workers())
    }

    /// Registered-descriptor slots one ring needs: two sockets per connection, two per pipe in
    /// flight, and spares. `RLIMIT_NOFILE` must be at least this: a ring's table may not be
    /// larger than the limit.
    pub fn slots_per_ring(&self) -> u64 {
        SOCKETS_PER_CONNECTION * self.connections_per_worker()
            + DESCRIPTORS_PER_PIPE * self.pipes_per_worker
            + RING_SPARE_SLOTS
    }

    /// `RLIMIT_NOFILE` the process needs: a ring's table, or its ordinary descriptors if more.
    pub fn nofile_needed(&self) -> u64 {
        self.slots_per_ring().max(ORDINARY_DESCRIPTORS)
    }

    /// Open files (`struct file`) of the whole process at full load: direct descriptors count
    /// against `fs.file-max` like ordinary ones.
    pub fn files_needed(&self) -> u64 {
        SOCKETS_PER_CONNECTION * self.max_connections
            + DESCRIPTORS_PER_PIPE * self.pipes_per_worker * self.workers()
            + ORDINARY_DESCRIPTORS
    }

    /// Smallest worker count (at least the configured one) whose rings each fit under
    /// `IORING_MAX_FIXED_FILES`, with the default pipe estimate.
    pub fn min_workers_for_table(&self) -> u64 {
        let fits = |w: u64| HostLoad::new(self.max_connections, w as usize).slots_per_ring() <= IORING_MAX_FIXED_FILES;
        (self.workers()..=self.max_connections.max(self.workers())).find(|&w| fits(w)).unwrap_or(self.workers())
    }

    /// Listen backlog per listener socket (`somaxconn`, `tcp_max_syn_backlog`).
    pub fn backlog_needed(&self) -> u64 {
        let share = self.connections_per_worker().div_ceil(ACCEPT_QUEUE_SHARE);
        share.next_power_of_two().max(MIN_LISTEN_BACKLOG)
    }

    /// `net.ipv4.tcp_mem` ceiling (pages) for every socket holding its minimum buffers at once.
    pub fn tcp_mem_pages_needed(&self) -> u64 {
        SOCKETS_PER_CONNECTION * self.max_connections * SOCKET_MIN_BUFFER_BYTES / PAGE_SIZE
    }

    /// `fs.pipe-user-pages-soft` for every pipe of every worker at its default size.
    pub fn pipe_pages_needed(&self) -> u64 {
        self.pipes_per_worker * self.workers() * PIPE_DEFAULT_PAGES
    }

    /// Locked memory (bytes) for the workers' rings, which recent kernels charge to
    /// `RLIMIT_MEMLOCK` of the user when the process lacks `CAP_IPC_LOCK`.
    pub fn memlock_needed(&self) -> u64 {
        self.workers() * ring_memory_bytes(self.ring_entries)
    }

    /// Conntrack entries: two flows per connection (client leg, backend leg) plus a quarter
    /// for flows that are closing (conntrack keeps TIME_WAIT entries for 120 s).
    pub fn conntrack_needed(&self) -> u64 {
        let flows = 2 * self.max_connections;
        flows + flows / 4
    }

    /// (source address, backend) pairs needed to hold every backend connection with
    /// `ports` ephemeral ports per pair.
    pub fn backend_pairs_needed(&self, ports: u64) -> u64 {
        self.max_connections.div_ceil(ports.max(1))
    }
}

/// Bytes of ring memory for a ring of `entries` submission entries (the completion queue has
/// twice as many): the SQE array, and the rings header with CQEs and the SQ index array, each
/// rounded up to whole pages. Checked on kernel 6.18: 20 rings of 4096 entries fit in an 8 MiB
/// `RLIMIT_MEMLOCK`, the 21st fails with ENOMEM.
pub fn ring_memory_bytes(entries: u32) -> u64 {
    const SQE_BYTES: u64 = 64;
    const CQE_BYTES: u64 = 16;
    const SQ_INDEX_BYTES: u64 = 4;
    const RINGS_HEADER_BYTES: u64 = 192;
    let sq = u64::from(entries.max(1)).next_power_of_two();
    let cq = 2 * sq;
    let pages = |bytes: u64| bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    pages(SQE_BYTES * sq) + pages(RINGS_HEADER_BYTES + CQE_BYTES * cq + SQ_INDEX_BYTES * sq)
}

/// Live values of the host; `None` where a value is absent or could not be read.
#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    /// `uname -r`, as printed.
    pub kernel_release: String,
    pub kernel: Option<KernelVersion>,
    pub nofile: Option<Rlimit>,
    pub memlock: Option<Rlimit>,
    /// The process holds CAP_IPC_LOCK (locked memory is then not limited).
    pub cap_ipc_lock: bool,
    /// `kernel.io_uring_disabled`; `None` when absent (kernels before 6.6 have no such switch).
    pub io_uring_disabled: Option<u64>,
    pub nr_open: Option<u64>,
    pub file_max: Option<u64>,
    /// First field of `fs/file-nr`: files allocated now on the whole host.
    pub files_allocated: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub port_range: Option<(u64, u64)>,
    pub tcp_tw_reuse: Option<u64>,
    pub pipe_user_pages_soft: Option<u64>,
    /// Third field of `net.ipv4.tcp_mem`: pages all TCP sockets may hold before allocations fail.
    pub tcp_mem_max: Option<u64>,
    /// `net.netfilter.nf_conntrack_max`; `None` when conntrack is not loaded.
    pub conntrack_max: Option<u64>,
    pub uring: UringFacts,
}

/// Reads the host and checks it against `max_connections` spread over `workers` rings.
pub fn check_host(max_connections: u64, workers: usize) -> HostReport {
    check_host_load(&HostLoad::new(max_connections, workers))
}

/// [`check_host`] with a load whose estimates (pipes, ring size, backend pairs) are given.
pub fn check_host_load(load: &HostLoad) -> HostReport {
    evaluate(load, &live::read_snapshot())
}

/// Compares a snapshot with what `load` needs. Pure.
pub fn evaluate(load: &HostLoad, snap: &HostSnapshot) -> HostReport {
    let mut rows = Vec::new();
    uring_rows(snap, &mut rows);
    descriptor_rows(load, snap, &mut rows);
    network_rows(load, snap, &mut rows);
    memory_rows(load, snap, &mut rows);
    HostReport { load: load.clone(), rows }
}

fn row(setting: &str, now: String, needed: String, ok: bool, severity: Severity) -> Row {
    Row { setting: setting.to_string(), now, needed, ok, severity, advice: String::new() }
}

impl Row {
    fn advise(mut self, advice: impl Into<String>) -> Row {
        self.advice = advice.into();
        self
    }
}

fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "unreadable".to_string(), |v| v.to_string())
}

fn at_least(value: Option<u64>, needed: u64) -> bool {
    value.is_some_and(|v| v >= needed)
}

fn uring_rows(snap: &HostSnapshot, rows: &mut Vec<Row>) {
    let disabled = snap.io_uring_disabled;
    let (now, ok, severity) = match disabled {
        None => ("absent (no switch)".to_string(), true, Severity::Soft),
        Some(0) => ("0".to_string(), true, Severity::Soft),
        // 1: only root or members of kernel.io_uring_group may create rings.
        Some(1) => ("1".to_string(), false, Severity::Soft),
        Some(v) => (v.to_string(), false, Severity::Hard),
    };
    rows.push(
        row("kernel.io_uring_disabled", now, "0".to_string(), ok, severity)
            .advise("set kernel.io_uring_disabled = 0 (1 allows rings only to root and kernel.io_uring_group)"),
    );

    let ring = &snap.uring.ring;
    let (now, ok) = match ring {
        Ok(()) => ("created".to_string(), true),
        Err(e) => (format!("failed: {e}"), false),
    };
    rows.push(
        row("io_uring ring", now, "can be created".to_string(), ok, Severity::Hard)
            .advise("ringlb runs only on io_uring: check kernel.io_uring_disabled and seccomp"),
    );
    if ring.is_err() {
        return;
    }

    let newest = snap.uring.features.iter().map(|f| f.since).max();
    if let Some(newest) = newest {
        let ok = snap.kernel.is_some_and(|k| k >= newest);
        let now = if snap.kernel_release.is_empty() { "unknown".to_string() } else { snap.kernel_release.clone() };
        rows.push(
            row("kernel", now, format!(">= {newest}"), ok, Severity::Soft)
                .advise("each feature below is checked on its own; this row is a summary"),
        );
    }
    for feature in &snap.uring.features {
        let (now, ok) = match &feature.supported {
            Ok(true) => (format!("yes ({})", feature.method), true),
            Ok(false) if feature.detail.is_empty() => (format!("no ({})", feature.method), false),
            Ok(false) => (format!("no ({}: {})", feature.method, feature.detail), false),
            Err(e) => (format!("unknown: {e}"), false),
        };
        rows.push(
            row(&format!("io_uring {}", feature.name), now, format!("yes ({}+)", feature.since), ok, Severity::Hard)
                .advise(format!("needs kernel {} or newer", feature.since)),
        );
    }
}

fn descriptor_rows(load: &HostLoad, snap: &HostSnapshot, rows: &mut Vec<Row>) {
    let slots = load.slots_per_ring();
    let min_workers = load.min_workers_for_table();
    rows.push(
        row(
            "registered slots per ring",
            slots.to_string(),
            format!("<= {IORING_MAX_FIXED_FILES}"),
            slots <= IORING_MAX_FIXED_FILES,
            Severity::Hard,
        )
        .advise(format!("one ring's table is capped by the kernel: run at least {min_workers} workers")),
    );

    let needed = load.nofile_needed();
    let (now, ok) = match snap.nofile {
        Some(limit) => (limit.to_string(), limit.soft >= needed),
        None => ("unreadable".to_string(), false),
    };
    rows.push(row("RLIMIT_NOFILE (soft)", now, format!(">= {needed}"), ok, Severity::Hard).advise(format!(
        "2 x {} connections per ring + {} pipe descriptors + {RING_SPARE_SLOTS} spare; \
             raise LimitNOFILE (systemd) or nofile (limits.d)",
        load.connections_per_worker(),
        DESCRIPTORS_PER_PIPE * load.pipes_per_worker,
    )));

    rows.push(
        row("fs.nr_open", show(snap.nr_open), format!(">= {needed}"), at_least(snap.nr_open, needed), Severity::Soft)
            .advise("RLIMIT_NOFILE cannot be raised above fs.nr_open"),
    );

    let files = load.files_needed() + snap.files_allocated.unwrap_or(0);
    rows.push(
        row("fs.file-max", show(snap.file_max), format!(">= {files}"), at_least(snap.file_max, files), Severity::Hard)
            .advise(format!(
                "files open on the host now ({}) + {} for ringlb: sockets and pipes, direct or not",
                show(snap.files_allocated),
                load.files_needed()
            )),
    );
}

fn network_rows(load: &HostLoad, snap: &HostSnapshot, rows: &mut Vec<Row>) {
    let backlog = load.backlog_needed();
    rows.push(
        row(
            "net.core.somaxconn",
            show(snap.somaxconn),
            format!(">= {backlog}"),
            at_least(snap.somaxconn, backlog),
            Severity::Soft,
        )
        .advise(format!(
            "caps each listener's accept queue; 1/{ACCEPT_QUEUE_SHARE} of a worker's connections \
             should fit during a reconnect storm"
        )),
    );
    rows.push(
        row(
            "net.ipv4.tcp_max_syn_backlog",
            show(snap.tcp_max_syn_backlog),
            format!(">= {backlog}"),
            at_least(snap.tcp_max_syn_backlog, backlog),
            Severity::Soft,
        )
        .advise("half-open connections per listener; keep it at least the accept queue"),
    );

    match snap.port_range {
        Some((low, high)) if high >= low => {
            let ports = high - low + 1;
            let now = format!("{low}-{high} ({ports} ports)");
            let (needed, ok) = match load.backend_pairs {
                Some(pairs) => {
                    let per_pair = load.max_connections.div_ceil(pairs.max(1));
                    (format!(">= {per_pair} ports ({pairs} backend pairs)"), ports >= per_pair)
                }
                None => {
                    let pairs = load.backend_pairs_needed(ports);
                    (format!("{pairs} (source, backend) pair(s)"), pairs <= 1)
                }
            };
            rows.push(row("net.ipv4.ip_local_port_range", now, needed, ok, Severity::Soft).advise(format!(
                "each (source address, backend address) pair has one port range: {} backend \
                     connections need {} pairs with this range; add backends or source addresses, \
                     or widen the range",
                load.max_connections,
                load.backend_pairs_needed(ports)
            )));
        }
        _ => rows.push(row(
            "net.ipv4.ip_local_port_range",
            "unreadable".to_string(),
            "readable".to_string(),
            false,
            Severity::Soft,
        )),
    }

    rows.push(
        row(
            "net.ipv4.tcp_tw_reuse",
            show(snap.tcp_tw_reuse),
            "1".to_string(),
            snap.tcp_tw_reuse == Some(1),
            Severity::Soft,
        )
        .advise("1 lets backend connects reuse ports in TIME_WAIT; 2 allows it on loopback only"),
    );

    if let Some(max) = snap.conntrack_max {
        let needed = load.conntrack_needed();
        rows.push(
            row(
                "net.netfilter.nf_conntrack_max",
                max.to_string(),
                format!(">= {needed}"),
                max >= needed,
                Severity::Soft,
            )
            .advise("a full conntrack table drops new connections: raise it or NOTRACK ringlb's ports"),
        );
    }
}

fn memory_rows(load: &HostLoad, snap: &HostSnapshot, rows: &mut Vec<Row>) {
    let pages = load.pipe_pages_needed();
    let pipe_ok = snap.pipe_user_pages_soft.is_some_and(|v| v == 0 || v >= pages);
    rows.push(
        row(
            "fs.pipe-user-pages-soft",
            show(snap.pipe_user_pages_soft),
            format!(">= {pages} (or 0)"),
            pipe_ok,
            Severity::Soft,
        )
        .advise(format!(
            "{} pipes x {PIPE_DEFAULT_PAGES} pages; past the limit new pipes get 2 pages",
            load.pipes_per_worker * load.workers()
        )),
    );

    let pages = load.tcp_mem_pages_needed();
    rows.push(
        row(
            "net.ipv4.tcp_mem (max pages)",
            show(snap.tcp_mem_max),
            format!(">= {pages}"),
            at_least(snap.tcp_mem_max, pages),
            Severity::Soft,
        )
        .advise(format!(
            "past this every TCP allocation fails; it should cover {} sockets with data queued \
             at their minimum buffers (sized from RAM by the kernel: see tuning/README.md)",
            SOCKETS_PER_CONNECTION * load.max_connections
        )),
    );

    let needed = load.memlock_needed();
    let (now, ok) = match snap.memlock {
        _ if snap.cap_ipc_lock => ("not limited (CAP_IPC_LOCK)".to_string(), true),
        Some(limit) => (limit.to_string(), limit.soft >= needed),
        None => ("unreadable".to_string(), false),
    };
    rows.push(row("RLIMIT_MEMLOCK (soft)", now, format!(">= {needed}"), ok, Severity::Soft).advise(format!(
        "{} rings of {} entries, charged per user to the locked-memory limit; \
             raise LimitMEMLOCK (systemd) or memlock (limits.d)",
        load.workers(),
        load.ring_entries
    )));
}
