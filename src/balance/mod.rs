//! Balancing policies: which server of a pool gets the next client connection.
//!
//! Owns the policies (`balance = ...` per pool), their per-server rules (weight, backup,
//! max_connections, slow start) and the per-server active-connection counters they read.
//! Pure code: no I/O, no locks, no clock reads (the caller passes `now`), no allocation per pick.
//! It must never block, and never decide anything from a memory address or a position in memory.
//!
//! What several workers share is kept to what the policies need for a global view: one cache
//! line per server with its active-connection count (`counters.rs`), and the least-conn tree and
//! the first bitmap, which index those counts. All are relaxed atomics; everything else a worker
//! keeps between picks lives in its own [`WorkerBalanceState`].
//!
//! # Interface
//!
//! Off the hot path, whenever a pool's server set, options or health change, the control plane
//! builds an immutable [`Balancer`] from the servers' [`ServerSpec`]s and publishes it with the
//! backend table, passing the pool's previous balancer so that the counters of the servers that
//! stay (same name) carry over:
//!
//! ```
//! # use ringlb::balance::*; use std::time::Instant;
//! # let specs = [ServerSpec::new("a", "127.0.0.1:80".parse().unwrap())];
//! # let previous: Option<&Balancer> = None;
//! let balancer = Balancer::build(Policy::LeastConn, &specs, previous)?;
//! // On a worker (one WorkerBalanceState per worker and pool, created once):
//! let mut worker = WorkerBalanceState::new(1);
//! let mut tried = ExcludeSet::new();
//! # let (client, now) = ("192.0.2.1".parse().unwrap(), Instant::now());
//! match balancer.select(&mut worker, client, &tried, now) {
//!     Pick::Server(index) => {
//!         // connect to specs[index]; on connect failure: release, then retry with
//!         // tried.insert(index); on close of the proxied connection: release.
//!         balancer.release(index, now);
//!     }
//!     Pick::AllFull => { /* every usable server is at max_connections: queue the client */ }
//!     Pick::NoneUsable => { /* no server up (or all tried): refuse the client */ }
//! }
//! # Ok::<(), BuildError>(())
//! ```
//!
//! `Pick::Server(i)` has already counted the connection on server `i` (the slot is reserved,
//! exactly, against `max_connections`); every such pick must be paired with exactly one
//! [`Balancer::release`] on the same balancer, whether the connect failed or the connection
//! ended, even if a newer balancer was published since (counts are shared through the carried
//! over cells, so the newer one sees the release too).
//!
//! # Rules shared by every policy
//!
//! A server is *usable* for a pick when it is up, its effective weight is above zero, it is below
//! its `max_connections` and it is not in the pick's [`ExcludeSet`]. Servers that are down or of
//! weight 0 are left out of the structures at build time; fullness, exclusion and the slow-start
//! ramp are checked per pick. The backup servers form a second tier, evaluated only when no
//! primary server is usable. When nothing is usable in either tier the outcome is
//! [`Pick::AllFull`] if some server was left out only for being full, else [`Pick::NoneUsable`].
//! Slow start scales the weight of a server that came up less than `slow_start` ago
//! ([`effective_weight`]); it applies to round-robin, least-conn and random-two and, as in
//! HAProxy, not to the static policies (source-hash and first).
//!
//! # Costs (measured by `pick-bench`, see `bench/README.md`)
//!
//! Every policy picks in constant or logarithmic time in the number of servers, and a pick plus
//! its release costs 15 to 45 ns at 256 servers on one worker, 10 ns of it the two atomic
//! operations on the server's counter:
//! - round-robin walks a precomputed period of the smooth weighted order, O(1);
//! - least-conn reads the root of a tournament tree over the live counters and repairs one
//!   root-to-leaf path per pick and per release, O(log n) (a plain scan of 256 counters costs
//!   about 0.45 µs here, ten times more; see `least_conn.rs`);
//! - source-hash is one hash and one lookup in a Maglev table, O(1);
//! - random-two draws two servers from an alias table, O(1);
//! - first finds the first non-full server with a bitmap of full servers, O(n / 64).
//!
//! When the fast path meets only excluded or full servers, each policy falls back to an exact
//! scan of its tier, O(n): this happens on connect retries and when servers are saturated,
//! where correctness of the outcome matters more than nanoseconds.

mod counters;
mod first;
mod hash;
mod least_conn;
mod maglev;
mod random_two;
mod rng;
mod round_robin;
mod weight;

#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;
mod view;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

pub use counters::ServerCounters;
pub use weight::{effective_weight, MAX_WEIGHT, WEIGHT_UNIT};

use first::First;
use least_conn::LeastConn;
use maglev::Maglev;
use random_two::RandomTwo;
use rng::Rng;
use round_robin::RoundRobin;
use view::{first_fit, Ctx, ServerInfo};

/// Most servers in one pool (server indices are 16-bit and the round-robin period grows with
/// servers x weight).
pub const MAX_SERVERS: usize = 1024;

/// Default size of the source-hash lookup table (a prime).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Largest source-hash table (2 bytes per entry, per tier).
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// How many servers an [`ExcludeSet`] can hold.
pub const EXCLUDE_CAPACITY: usize = 16;

/// A pool's balancing policy (`balance = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// `round-robin`: smooth weighted round robin (nginx's), per worker.
    #[default]
    RoundRobin,
    /// `least-conn`: fewest active connections relative to weight, across all workers.
    LeastConn,
    /// `source-hash`: Maglev consistent hashing of the client IP.
    SourceHash {
        /// Lookup table size, a prime; [`DEFAULT_TABLE_SIZE`] unless configured.
        table_size: u32,
    },
    /// `random-two`: the less loaded (relative to weight) of two weighted random servers.
    RandomTwo,
    /// `first`: the first server in declaration order below its max_connections.
    First,
}

impl Policy {
    /// The names `balance` accepts, as error messages list them.
    pub const EXPECTED: &'static str = "round-robin, least-conn, source-hash, random-two or first";

    /// The spelling used in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::LeastConn => "least-conn",
            Policy::SourceHash { .. } => "source-hash",
            Policy::RandomTwo => "random-two",
            Policy::First => "first",
        }
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;

    /// Parses the configuration name; `source-hash` gets the default table size.
    fn from_str(name: &str) -> Result<Policy, UnknownPolicy> {
        match name {
            "round-robin" => Ok(Policy::RoundRobin),
            "least-conn" => Ok(Policy::LeastConn),
            "source-hash" => Ok(Policy::SourceHash { table_size: DEFAULT_TABLE_SIZE }),
            "random-two" => Ok(Policy::RandomTwo),
            "first" => Ok(Policy::First),
            other => Err(UnknownPolicy(other.to_string())),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown balance policy `{0}` (expected {expected})", expected = Policy::EXPECTED)]
pub struct UnknownPolicy(pub String);

/// Why a balancer could not be built from a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("a pool may have at most {max} servers, this one has {count}")]
    TooManyServers { count: usize, max: usize },
    #[error("server name `{0}` appears more than once in the pool")]
    DuplicateName(String),
    #[error("server `{name}`: weight {weight} is above the maximum of {MAX_WEIGHT}")]
    WeightOutOfRange { name: String, weight: u32 },
    #[error("source-hash table size {0} must be a prime number")]
    TableSizeNotPrime(u32),
    #[error(
        "source-hash table size {size} must be between the number of servers ({servers}) \
         and {MAX_TABLE_SIZE}"
    )]
    TableSizeOutOfRange { size: u32, servers: usize },
}

/// One server as the policies see it: its configuration plus its current health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Stable identity: counters carry over and source-hash places by this name.
    pub name: String,
    /// Where to connect. Not read by the policies: a server is identified by its name (which
    /// the configuration defaults to the address as written).
    pub addr: SocketAddr,
    /// 0..=[`MAX_WEIGHT`]; 0 = draining (keeps its connections, gets no new one).
    pub weight: u32,
    /// Used only when no non-backup server is usable.
    pub backup: bool,
    /// Concurrent connections at most; 0 = unlimited.
    pub max_connections: u32,
    /// Ramp-up period of the weight after the server comes up; zero = none.
    pub slow_start: Duration,
    /// Health: a server that is down gets no new connection.
    pub up: bool,
    /// When the server last came up; `None` = up since before ringlb started (no ramp).
    pub up_since: Option<Instant>,
}

impl ServerSpec {
    /// An up, primary server of weight 1 without limits, named `name`.
    pub fn new(name: &str, addr: SocketAddr) -> ServerSpec {
        ServerSpec {
            name: name.to_string(),
            addr,
            weight: 1,
            backup: false,
            max_connections: 0,
            slow_start: Duration::ZERO,
            up: true,
            up_since: None,
        }
    }
}

/// The outcome of [`Balancer::select`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Connect to the server at this index of the specs; a slot is reserved on it.
    Server(usize),
    /// Every server that could take the client is at its max_connections.
    AllFull,
    /// No server is up with a weight above zero outside the exclusion set.
    NoneUsable,
}

/// Servers already tried for one client (connect retries), by index. Fixed capacity, no
/// allocation. Indices refer to one balancer: start a new set if a newer one is used.
#[derive(Debug, Clone, Default)]
pub struct ExcludeSet {
    len: u8,
    servers: [u16; EXCLUDE_CAPACITY],
}

impl ExcludeSet {
    pub const fn new() -> ExcludeSet {
        ExcludeSet { len: 0, servers: [0; EXCLUDE_CAPACITY] }
    }

    /// Adds `server`; false when the set is full (the caller should stop retrying).
    pub fn insert(&mut self, server: usize) -> bool {
        if self.contains(server) {
            return true;
        }
        let (Some(slot), Ok(server)) = (self.servers.get_mut(self.len as usize), u16::try_from(server)) else {
            return false;
        };
        *slot = server;
        self.len += 1;
        true
    }

    #[inline]
    pub fn contains(&self, server: usize) -> bool {
        self.servers[..self.len as usize].iter().any(|&s| usize::from(s) == server)
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// What one worker remembers between its picks in one pool: round-robin cursors, the random
/// generator, the repair cursor of least-conn and first. Never shared between workers; one per
/// worker and pool, created once. It follows balancer swaps by itself (its cursors restart, at a
/// seed-dependent place, when it meets a balancer it has not seen).
#[derive(Debug, Clone)]
pub struct WorkerBalanceState {
    rng: Rng,
    balancer: u64,
    /// Next entry that least-conn or first re-checks against the live counters.
    sweep: u32,
}

impl WorkerBalanceState {
    /// `seed` should differ between workers (the worker index will do), so that their random
    /// draws are not in lockstep.
    pub fn new(seed: u64) -> WorkerBalanceState {
        WorkerBalanceState { rng: Rng::new(seed), balancer: 0, sweep: 0 }
    }

    #[inline]
    fn follow(&mut self, balancer: u64) {
        if self.balancer != balancer {
            self.balancer = balancer;
            self.sweep = 0;
        }
    }
}

static NEXT_BALANCER_ID: AtomicU64 = AtomicU64::new(1);

/// One pool's balancing state for one published version of its servers: the policy's
/// immutable structures, the shared counters and the policy's shared index over them.
#[derive(Debug)]
pub struct Balancer {
    id: u64,
    policy: Policy,
    servers: Box<[ServerInfo]>,
    counters: ServerCounters,
    /// Primary tier, then backup tier.
    tiers: [Tier; 2],
    /// The latest moment at which some server is still ramping up; `None` if none ever will.
    ramp_until: Option<Instant>,
}

impl Balancer {
    /// Builds the structures of `policy` over `specs` (index i of the balancer = `specs[i]`),
    /// carrying over the counters of `previous` (the same pool's current balancer) by name.
    /// Costs up to milliseconds; never call it on a worker.
    pub fn build(policy: Policy, specs: &[ServerSpec], previous: Option<&Balancer>) -> Result<Balancer, BuildError> {
        validate(policy, specs)?;
        let servers: Box<[ServerInfo]> = specs.iter().map(ServerInfo::from_spec).collect();
        let counters = ServerCounters::carry_over(previous.map(|b| &b.counters), specs.iter().map(|s| s.name.as_str()));
        let tier = |backup: bool| {
            let members: Vec<u16> = (0..specs.len())
                .filter(|&i| specs[i].backup == backup && specs[i].up && specs[i].weight > 0)
                .map(|i| i as u16) // < MAX_SERVERS, checked by validate
                .collect();
            let ctx = Ctx { servers: &servers, counters: &counters, exclude: &NOTHING_EXCLUDED, ramp_now: None };
            Tier::build(policy, &members, specs, &ctx)
        };
        let tiers = [tier(false), tier(true)];
        let ramp_until = servers.iter().filter_map(|s| s.ramp.map(|r| r.ends)).max();
        Ok(Balancer { id: NEXT_BALANCER_ID.fetch_add(1, Relaxed), policy, servers, counters, tiers, ramp_until })
    }

    /// Picks a server for a new connection of `client`, skipping the servers in `exclude`, and
    /// reserves a slot on it. `now` is the worker's current time (a cached value is fine; it
    /// only drives the slow-start ramp).
    #[inline]
    pub fn select(&self, worker: &mut WorkerBalanceState, client: IpAddr, exclude: &ExcludeSet, now: Instant) -> Pick {
        worker.follow(self.id);
        let ctx = self.ctx(exclude, now);
        let primary = self.tiers[0].select(&ctx, worker, client);
        if let Pick::Server(_) = primary {
            return primary;
        }
        match self.tiers[1].select(&ctx, worker, client) {
            Pick::Server(index) => Pick::Server(index),
            Pick::AllFull => Pick::AllFull,
            Pick::NoneUsable => primary,
        }
    }

    /// Releases the slot that a [`Pick::Server`]`(server)` of this balancer reserved.
    #[inline]
    pub fn release(&self, server: usize, now: Instant) {
        let before = self.counters.cell(server).release();
        let ctx = self.ctx(&NOTHING_EXCLUDED, now);
        for tier in &self.tiers {
            tier.released(&ctx, server, before);
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The shared counters (for statistics: active connections per server).
    pub fn counters(&self) -> &ServerCounters {
        &self.counters
    }

    /// Distinguishes balancers: two builds never share an id within a process.
    pub fn id(&self) -> u64 {
        self.id
    }

    #[inline]
    fn ctx<'a>(&'a self, exclude: &'a ExcludeSet, now: Instant) -> Ctx<'a> {
        Ctx {
            servers: &self.servers,
            counters: &self.counters,
            exclude,
            ramp_now: self.ramp_until.filter(|&until| now < until).map(|_| now),
        }
    }
}

static NOTHING_EXCLUDED: ExcludeSet = ExcludeSet::new();

fn validate(policy: Policy, specs: &[ServerSpec]) -> Result<(), BuildError> {
    if specs.len() > MAX_SERVERS {
        return Err(BuildError::TooManyServers { count: specs.len(), max: MAX_SERVERS });
    }
    let mut names = std::collections::HashSet::new();
    for spec in specs {
        if !names.insert(spec.name.as_str()) {
            return Err(BuildError::DuplicateName(spec.name.clone()));
        }
        if spec.weight > MAX_WEIGHT {
            return Err(BuildError::WeightOutOfRange { name: spec.name.clone(), weight: spec.weight });
        }
    }
    if let Policy::SourceHash { table_size } = policy {
        if (table_size as usize) < specs.len().max(2) || table_size > MAX_TABLE_SIZE {
            return Err(BuildError::TableSizeOutOfRange { size: table_size, servers: specs.len() });
        }
        if !maglev::is_prime(table_size) {
            return Err(BuildError::TableSizeNotPrime(table_size));
        }
    }
    Ok(())
}

/// One tier's structure, by policy.
#[derive(Debug)]
enum Tier {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
    SourceHash(Maglev),
    RandomTwo(RandomTwo),
    First(First),
}

impl Tier {
    fn build(policy: Policy, members: &[u16], specs: &[ServerSpec], ctx: &Ctx<'_>) -> Tier {
        match policy {
            Policy::RoundRobin => Tier::RoundRobin(RoundRobin::build(members, specs)),
            Policy::LeastConn => Tier::LeastConn(LeastConn::build(members, ctx)),
            Policy::SourceHash { table_size } => Tier::SourceHash(Maglev::build(members, specs, table_size as usize)),
            Policy::RandomTwo => Tier::RandomTwo(RandomTwo::build(members, specs)),
            Policy::First => Tier::First(First::build(members, specs)),
        }
    }

    #[inline]
    fn select(&self, ctx: &Ctx<'_>, worker: &mut WorkerBalanceState, client: IpAddr) -> Pick {
        match self {
            Tier::RoundRobin(rr) => rr.select(ctx, worker),
            Tier::LeastConn(lc) => lc.select(ctx, worker),
            Tier::SourceHash(maglev) => maglev.select(ctx, client),
            Tier::RandomTwo(p2c) => p2c.select(ctx, worker),
            Tier::First(first) => first.select(ctx, worker),
        }
    }

    /// Keeps the tier's shared index in step with a release (`before` = count before it).
    #[inline]
    fn released(&self, ctx: &Ctx<'_>, server: usize, before: u32) {
        match self {
            Tier::LeastConn(lc) => lc.released(ctx, server),
            Tier::First(first) => first.released(ctx, server, before),
            Tier::RoundRobin(_) | Tier::SourceHash(_) | Tier::RandomTwo(_) => {}
        }
    }
}
