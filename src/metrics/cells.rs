//! The counter blocks behind the metrics, and the causes they count by.
//!
//! Writers never share a cache line: a worker writes only its own [`WorkerStats`] and its own slot
//! (indexed by worker id) of each [`ListenerStats`], [`ServerStats`] and [`PoolStats`], each slot
//! aligned to a cache line; the prober thread writes the control-plane fields of [`ServerStats`]. Every write is one
//! relaxed atomic add on a line no other core writes, so counting costs a few nanoseconds and
//! never a lock. The scrape reads every slot and sums; a sum may lag a concurrent write by a moment,
//! never lose one.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use super::names::HISTOGRAM_BOUNDS;

/// Buckets of a histogram: one per bound, and `+Inf`.
const BUCKETS: usize = HISTOGRAM_BOUNDS + 1;

#[inline]
fn add(cell: &AtomicU64, n: u64) {
    cell.fetch_add(n, Relaxed);
}

/// One block of cells per worker, each on cache lines of its own (`T` is aligned to 64).
#[derive(Debug)]
struct PerWorker<T> {
    slots: Box<[T]>,
}

impl<T: Default> PerWorker<T> {
    /// Slots for `workers` workers (at least one).
    fn new(workers: usize) -> PerWorker<T> {
        PerWorker { slots: (0..workers.max(1)).map(|_| T::default()).collect() }
    }

    /// Worker `worker`'s slot. Slots are as many as workers; an id past them (which the data
    /// path never has) shares a slot, which is still counted exactly, only not alone.
    #[inline]
    fn slot(&self, worker: usize) -> &T {
        &self.slots[worker % self.slots.len()]
    }

    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.slots.iter()
    }
}

/// Why a client connection ended (the `cause` label of closed connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// Both directions finished.
    Done,
    /// No server to connect to (none usable, or the listener's pool is gone).
    NoServer,
    /// Waited `queue_timeout` for a server below its max_connections, in vain.
    QueueTimeout,
    /// Every connect attempt failed.
    ConnectFailed,
    /// The client side failed (reset, broken pipe).
    ClientError,
    /// The backend side failed.
    BackendError,
    IdleTimeout,
    /// The process stopped (closed at once, or at the end of `shutdown_grace`).
    Shutdown,
}

impl CloseCause {
    pub const ALL: [CloseCause; 8] = [
        CloseCause::Done,
        CloseCause::NoServer,
        CloseCause::QueueTimeout,
        CloseCause::ConnectFailed,
        CloseCause::ClientError,
        CloseCause::BackendError,
        CloseCause::IdleTimeout,
        CloseCause::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseCause::Done => "done",
            CloseCause::NoServer => "no_server",
            CloseCause::QueueTimeout => "queue_timeout",
            CloseCause::ConnectFailed => "connect_failed",
            CloseCause::ClientError => "client_error",
            CloseCause::BackendError => "backend_error",
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::Shutdown => "shutdown",
        }
    }
}

/// Why a connect to a server failed (the `cause` label of connect failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    Reset,
    /// Anything else: unreachable host or network, a local error.
    Other,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 4] =
        [ConnectFailure::Refused, ConnectFailure::Timeout, ConnectFailure::Reset, ConnectFailure::Other];

    /// The cause of a failed connect that ended with `errno` (positive).
    pub fn from_errno(errno: i32) -> ConnectFailure {
        match errno {
            libc::ECONNREFUSED => ConnectFailure::Refused,
            libc::ETIMEDOUT | libc::ETIME => ConnectFailure::Timeout,
            libc::ECONNRESET => ConnectFailure::Reset,
            _ => ConnectFailure::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Reset => "reset",
            ConnectFailure::Other => "other",
        }
    }
}

/// The errno of a failed accept (the `errno` label), for the ones worth telling apart.
const ACCEPT_ERRNOS: [(i32, &str); 5] = [
    (libc::ECONNABORTED, "ECONNABORTED"),
    (libc::EMFILE, "EMFILE"),
    (libc::ENFILE, "ENFILE"),
    (libc::ENOMEM, "ENOMEM"),
    (libc::ENOBUFS, "ENOBUFS"),
];
/// Accept errno labels: the known ones, then `other`.
const ACCEPT_ERRORS: usize = ACCEPT_ERRNOS.len() + 1;

/// The `errno` label values of accept errors, in cell order.
pub fn accept_error_labels() -> impl Iterator<Item = &'static str> {
    ACCEPT_ERRNOS.iter().map(|&(_, name)| name).chain(std::iter::once("other"))
}

fn accept_error_index(errno: i32) -> usize {
    ACCEPT_ERRNOS.iter().position(|&(e, _)| e == errno).unwrap_or(ACCEPT_ERRNOS.len())
}

/// The two directions of a proxied connection (the `direction` label of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::ClientToBackend, Direction::BackendToClient];

    pub fn label(self) -> &'static str {
        match self {
            Direction::ClientToBackend => "client_to_backend",
            Direction::BackendToClient => "backend_to_client",
        }
    }
}

/// A server's health as the prober last judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthView {
    Up,
    Down,
    /// Not judged: the server is disabled, so its checks are ignored.
    Unknown,
}

impl HealthView {
    pub fn label(self) -> &'static str {
        match self {
            HealthView::Up => "up",
            HealthView::Down => "down",
            HealthView::Unknown => "unknown",
        }
    }
}

// ---- histograms ----

/// Fixed-bucket histogram cells written by one thread.
#[derive(Debug, Default)]
pub struct HistogramCells {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl HistogramCells {
    fn record(&self, bounds: &[u64; HISTOGRAM_BOUNDS], value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let bucket = bounds.iter().position(|&bound| micros <= bound).unwrap_or(HISTOGRAM_BOUNDS);
        add(&self.counts[bucket], 1);
        add(&self.sum_micros, micros);
    }

    fn read_into(&self, into: &mut HistogramSnapshot) {
        for (total, cell) in into.counts.iter_mut().zip(&self.counts) {
            *total = total.wrapping_add(cell.load(Relaxed));
        }
        into.sum_micros = into.sum_micros.wrapping_add(self.sum_micros.load(Relaxed));
    }
}

/// Summed histogram cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub counts: [u64; BUCKETS],
    pub sum_micros: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |a, &b| a.wrapping_add(b))
    }
}

// ---- per worker ----

/// What one worker counts about itself: written by that worker only.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerStats {
    direct_descriptors: AtomicU64,
    descriptor_slots: AtomicU64,
}

impl WorkerStats {
    /// The registered descriptors in use, and the size of the table.
    pub fn set_descriptors(&self, in_use: u64, slots: u64) {
        self.direct_descriptors.store(in_use, Relaxed);
        self.descriptor_slots.store(slots, Relaxed);
    }

    /// (in use, table size).
    pub fn descriptors(&self) -> (u64, u64) {
        (self.direct_descriptors.load(Relaxed), self.descriptor_slots.load(Relaxed))
    }
}

// ---- per listener ----

/// One listener's counters in one worker.
#[derive(Debug, Default)]
#[repr(align(64))]
struct ListenerCells {
    accepted: AtomicU64,
    closed: [AtomicU64; CloseCause::ALL.len()],
    accept_errors: [AtomicU64; ACCEPT_ERRORS],
}

/// One listener's counters: a slot per worker. Shared by every worker's view of the listener, and
/// kept by name, so a listener a reload re-binds keeps counting.
#[derive(Debug)]
pub struct ListenerStats {
    slots: PerWorker<ListenerCells>,
}

/// One listener's counters summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerTotals {
    pub accepted: u64,
    pub closed: [u64; CloseCause::ALL.len()],
    pub accept_errors: [u64; ACCEPT_ERRORS],
}

impl ListenerTotals {
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().fold(0, |a, &b| a.wrapping_add(b))
    }
}

impl ListenerStats {
    pub fn new(workers: usize) -> ListenerStats {
        ListenerStats { slots: PerWorker::new(workers) }
    }

    #[inline]
    pub fn accepted(&self, worker: usize) {
        add(&self.slots.slot(worker).accepted, 1);
    }

    #[inline]
    pub fn closed(&self, worker: usize, cause: CloseCause) {
        add(&self.slots.slot(worker).closed[cause as usize], 1);
    }

    /// A failed accept; `errno` is positive.
    pub fn accept_error(&self, worker: usize, errno: i32) {
        add(&self.slots.slot(worker).accept_errors[accept_error_index(errno)], 1);
    }

    pub fn totals(&self) -> ListenerTotals {
        let mut t = ListenerTotals::default();
        for l in self.slots.iter() {
            // Closes before accepts: a connection is accepted before it closes, so reading in
            // this order never sees more closed than accepted.
            for (total, cell) in t.closed.iter_mut().zip(&l.closed) {
                *total = total.wrapping_add(cell.load(Relaxed));
            }
            for (total, cell) in t.accept_errors.iter_mut().zip(&l.accept_errors) {
                *total = total.wrapping_add(cell.load(Relaxed));
            }
            t.accepted = t.accepted.wrapping_add(l.accepted.load(Relaxed));
        }
        t
    }
}

// ---- per server ----

/// One server's counters in one worker.
#[derive(Debug, Default)]
#[repr(align(64))]
struct ServerCells {
    active: AtomicU64,
    connections: AtomicU64,
    failures: [AtomicU64; ConnectFailure::ALL.len()],
    retries: AtomicU64,
    bytes: [AtomicU64; Direction::ALL.len()],
}

/// One server's counters: a slot per worker, and what the prober records. Shared by every
/// snapshot of the backend table that holds the server (same pool and server name).
#[derive(Debug)]
pub struct ServerStats {
    slots: PerWorker<ServerCells>,
    prober: ProberCells,
}

/// What the prober writes, on lines of its own: workers read the `slots` pointer beside it on
/// every count, and a check result must not take that line from their caches.
#[derive(Debug, Default)]
#[repr(align(64))]
struct ProberCells {
    /// A [`HealthView`] as u8.
    health: AtomicU8,
    /// Transitions to up, to down.
    transitions: [AtomicU64; 2],
    checks: HistogramCells,
}

/// One server's data-path counters summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerTotals {
    pub active: u64,
    pub connections: u64,
    pub failures: [u64; ConnectFailure::ALL.len()],
    pub retries: u64,
    pub bytes: [u64; Direction::ALL.len()],
}

impl ServerStats {
    /// Counters for `workers` workers (at least one slot).
    pub fn new(workers: usize) -> ServerStats {
        ServerStats {
            slots: PerWorker::new(workers),
            prober: ProberCells { health: AtomicU8::new(HealthView::Up as u8), ..ProberCells::default() },
        }
    }

    /// A connection to the server was established (it is open until `disconnected`).
    #[inline]
    pub fn connected(&self, worker: usize) {
        let s = self.slots.slot(worker);
        add(&s.connections, 1);
        add(&s.active, 1);
    }

    /// A connection counted by `connected` on the same worker closed.
    #[inline]
    pub fn disconnected(&self, worker: usize) {
        self.slots.slot(worker).active.fetch_sub(1, Relaxed);
    }

    #[inline]
    pub fn connect_failed(&self, worker: usize, cause: ConnectFailure) {
        add(&self.slots.slot(worker).failures[cause as usize], 1);
    }

    #[inline]
    pub fn retried(&self, worker: usize) {
        add(&self.slots.slot(worker).retries, 1);
    }

    #[inline]
    pub fn delivered(&self, worker: usize, direction: Direction, bytes: u64) {
        add(&self.slots.slot(worker).bytes[direction as usize], bytes);
    }

    /// The prober: one active check took `took`.
    pub fn record_check(&self, took: Duration) {
        self.prober.checks.record(&super::names::CHECK_DURATION_BOUNDS, took);
    }

    /// The prober: the server's health now.
    pub fn set_health(&self, health: HealthView) {
        self.prober.health.store(health as u8, Relaxed);
    }

    /// The prober: the health changed to up (`true`) or down.
    pub fn transition(&self, up: bool) {
        add(&self.prober.transitions[usize::from(!up)], 1);
    }

    pub fn health(&self) -> HealthView {
        match self.prober.health.load(Relaxed) {
            h if h == HealthView::Up as u8 => HealthView::Up,
            h if h == HealthView::Down as u8 => HealthView::Down,
            _ => HealthView::Unknown,
        }
    }

    /// Transitions (to up, to down).
    pub fn transitions(&self) -> (u64, u64) {
        (self.prober.transitions[0].load(Relaxed), self.prober.transitions[1].load(Relaxed))
    }

    pub fn checks(&self) -> HistogramSnapshot {
        let mut snapshot = HistogramSnapshot::default();
        self.prober.checks.read_into(&mut snapshot);
        snapshot
    }

    pub fn totals(&self) -> ServerTotals {
        let mut t = ServerTotals::default();
        for s in self.slots.iter() {
            // A worker's active count can read one below zero for a moment only if slots are
            // shared (see `PerWorker::slot`); the wrapping sum comes out right either way.
            t.active = t.active.wrapping_add(s.active.load(Relaxed));
            t.connections = t.connections.wrapping_add(s.connections.load(Relaxed));
            for (total, cell) in t.failures.iter_mut().zip(&s.failures) {
                *total = total.wrapping_add(cell.load(Relaxed));
            }
            t.retries = t.retries.wrapping_add(s.retries.load(Relaxed));
            for (total, cell) in t.bytes.iter_mut().zip(&s.bytes) {
                *total = total.wrapping_add(cell.load(Relaxed));
            }
        }
        // A close read before its connect would wrap the sum below zero.
        if t.active > u64::MAX / 2 {
            t.active = 0;
        }
        t
    }
}

// ---- per pool ----

#[derive(Debug, Default)]
#[repr(align(64))]
struct PoolCells {
    durations: HistogramCells,
}

/// A pool's rare events, over the life of the process: clients that found every server down,
/// and clients that queued for a server slot. Shared atomics rather than per-worker slots: they
/// are counted once per such client, never per byte, and the prober reads them too.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Closed at once (`on_all_down = "reject"`).
    pub rejected: AtomicU64,
    /// Sent to a server whatever its health (`on_all_down = "fail-open"`).
    pub failed_open: AtomicU64,
    /// Clients that waited because every server was at its max_connections.
    pub queued: AtomicU64,
    /// Of those, closed after `queue_timeout` without a slot.
    pub queue_timeouts: AtomicU64,
}

/// One pool's counters: a slot per worker. Shared by every snapshot of the table (same name).
#[derive(Debug)]
pub struct PoolStats {
    slots: PerWorker<PoolCells>,
}

/// One pool's counters summed over the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolTotals {
    pub durations: HistogramSnapshot,
}

impl PoolStats {
    pub fn new(workers: usize) -> PoolStats {
        PoolStats { slots: PerWorker::new(workers) }
    }

    /// A client connection of the pool closed after `lifetime`.
    #[inline]
    pub fn closed(&self, worker: usize, lifetime: Duration) {
        self.slots.slot(worker).durations.record(&super::names::CONNECTION_DURATION_BOUNDS, lifetime);
    }

    pub fn totals(&self) -> PoolTotals {
        let mut t = PoolTotals::default();
        for s in self.slots.iter() {
            s.durations.read_into(&mut t.durations);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_slot_has_cache_lines_of_its_own() {
        assert_eq!(std::mem::align_of::<ServerCells>(), 64);
        assert_eq!(std::mem::align_of::<PoolCells>(), 64);
        assert_eq!(std::mem::align_of::<ListenerCells>(), 64);
        assert_eq!(std::mem::align_of::<WorkerStats>(), 64);
        assert_eq!(std::mem::align_of::<ProberCells>(), 64);
        let stats = ServerStats::new(2);
        let a = stats.slots.slot(0) as *const ServerCells as usize;
        let b = stats.slots.slot(1) as *const ServerCells as usize;
        assert!(b - a >= 64 && a % 64 == 0);
    }

    #[test]
    fn server_counters_sum_over_workers() {
        let stats = ServerStats::new(3);
        stats.connected(0);
        stats.connected(1);
        stats.connected(2);
        stats.disconnected(1);
        stats.connect_failed(2, ConnectFailure::from_errno(libc::ECONNREFUSED));
        stats.connect_failed(0, ConnectFailure::from_errno(libc::ETIME));
        stats.connect_failed(0, ConnectFailure::from_errno(libc::EHOSTUNREACH));
        stats.retried(1);
        stats.delivered(0, Direction::ClientToBackend, 100);
        stats.delivered(2, Direction::ClientToBackend, 1);
        stats.delivered(1, Direction::BackendToClient, 7);
        let t = stats.totals();
        assert_eq!((t.active, t.connections, t.retries), (2, 3, 1));
        assert_eq!(t.failures, [1, 1, 0, 1]);
        assert_eq!(t.bytes, [101, 7]);
    }

    #[test]
    fn a_worker_id_past_the_slots_still_counts() {
        let stats = ServerStats::new(1);
        stats.connected(5);
        stats.disconnected(5);
        stats.connected(0);
        assert_eq!(stats.totals().active, 1);
        assert_eq!(stats.totals().connections, 2);
    }

    #[test]
    fn histograms_bucket_by_upper_bound_and_sum_in_microseconds() {
        let pool = PoolStats::new(2);
        pool.closed(0, Duration::from_micros(1_000)); // le 1ms
        pool.closed(1, Duration::from_micros(1_001)); // le 5ms
        pool.closed(1, Duration::from_secs(7200)); // +Inf
        let t = pool.totals().durations;
        assert_eq!(t.counts[0], 1);
        assert_eq!(t.counts[1], 1);
        assert_eq!(t.counts[HISTOGRAM_BOUNDS], 1);
        assert_eq!(t.count(), 3);
        assert_eq!(t.sum_micros, 2_001 + 7_200_000_000);
    }

    #[test]
    fn listener_counters_by_cause_and_errno() {
        let l = ListenerStats::new(2);
        l.accepted(1);
        l.accepted(0);
        l.closed(1, CloseCause::IdleTimeout);
        l.accept_error(1, libc::EMFILE);
        l.accept_error(0, libc::EPERM);
        let t = l.totals();
        assert_eq!(t.accepted, 2);
        assert_eq!(t.closed_total(), 1);
        assert_eq!(t.closed[CloseCause::IdleTimeout as usize], 1);
        let labels: Vec<&str> = accept_error_labels().collect();
        let emfile = labels.iter().position(|&l| l == "EMFILE").unwrap_or(usize::MAX);
        assert_eq!(t.accept_errors[emfile], 1);
        assert_eq!(t.accept_errors[labels.len() - 1], 1, "other");
    }

    #[test]
    fn health_round_trips() {
        let s = ServerStats::new(1);
        for h in [HealthView::Down, HealthView::Unknown, HealthView::Up] {
            s.set_health(h);
            assert_eq!(s.health(), h);
        }
        s.transition(true);
        s.transition(false);
        s.transition(false);
        assert_eq!(s.transitions(), (1, 2));
    }
}
