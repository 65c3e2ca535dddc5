//! What one pick reads about a pool's servers, gathered once per pick.
//!
//! Owns the per-server facts fixed for a balancer's life ([`ServerInfo`]), the per-pick view
//! that the policies share ([`Ctx`]: effective weights, exclusion, fullness, reservation) and
//! the exact first-fit scan every policy falls back to. Never reads a clock: the caller's `now`
//! is all it knows of time.

use std::time::{Duration, Instant};

use super::rng::Rng;
use super::{effective_weight, ExcludeSet, Pick, ServerCounters, ServerSpec, WEIGHT_UNIT};

/// What the hot path needs to know about one server, fixed for the balancer's life.
#[derive(Debug)]
pub(crate) struct ServerInfo {
    /// Configured weight, 1..=256 for tier members.
    pub(crate) weight: u32,
    pub(crate) max_connections: u32,
    pub(crate) ramp: Option<Ramp>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Ramp {
    pub(crate) up_since: Instant,
    pub(crate) slow_start: Duration,
    pub(crate) ends: Instant,
}

impl ServerInfo {
    pub(crate) fn from_spec(spec: &ServerSpec) -> ServerInfo {
        let ramp = match spec.up_since {
            Some(up_since) if !spec.slow_start.is_zero() && spec.weight > 0 => {
                up_since.checked_add(spec.slow_start).map(|ends| Ramp { up_since, slow_start: spec.slow_start, ends })
            }
            _ => None,
        };
        ServerInfo { weight: spec.weight, max_connections: spec.max_connections, ramp }
    }
}

/// Everything one pick (or release) reads, gathered once.
pub(crate) struct Ctx<'a> {
    pub(crate) servers: &'a [ServerInfo],
    pub(crate) counters: &'a ServerCounters,
    pub(crate) exclude: &'a ExcludeSet,
    /// The time of the pick while some server may be inside its slow-start period (effective
    /// weights must then be computed); `None` otherwise, and at build time.
    pub(crate) ramp_now: Option<Instant>,
}

impl Ctx<'_> {
    /// Full weight of `server`, in 1/[`WEIGHT_UNIT`] units.
    #[inline]
    pub(crate) fn full_weight(&self, server: usize) -> u32 {
        self.servers[server].weight * WEIGHT_UNIT
    }

    /// Effective weight of `server` now, in 1/[`WEIGHT_UNIT`] units.
    #[inline]
    pub(crate) fn weight(&self, server: usize) -> u32 {
        match self.ramp_now {
            None => self.full_weight(server),
            Some(now) => self.ramped_weight(server, now),
        }
    }

    /// The weight while some server ramps up (out of line: rare, and heavier).
    #[cold]
    #[inline(never)]
    fn ramped_weight(&self, server: usize, now: Instant) -> u32 {
        let info = &self.servers[server];
        match info.ramp {
            Some(ramp) if now < ramp.ends => {
                effective_weight(info.weight, ramp.slow_start, now.saturating_duration_since(ramp.up_since))
            }
            _ => info.weight * WEIGHT_UNIT,
        }
    }

    /// Slow start for policies that do not compare loads: pass over a ramping server with
    /// probability 1 - effective / full weight, so that its share follows its effective weight.
    #[inline]
    pub(crate) fn ramp_skips(&self, server: usize, rng: &mut Rng) -> bool {
        match self.ramp_now {
            None => false,
            Some(now) => self.ramp_skips_now(server, now, rng),
        }
    }

    #[cold]
    #[inline(never)]
    fn ramp_skips_now(&self, server: usize, now: Instant, rng: &mut Rng) -> bool {
        let (effective, full) = (self.ramped_weight(server, now), self.full_weight(server));
        effective < full && rng.below(full) >= effective
    }

    #[inline]
    pub(crate) fn excluded(&self, server: usize) -> bool {
        !self.exclude.is_empty() && self.exclude.contains(server)
    }

    #[inline]
    pub(crate) fn active(&self, server: usize) -> u32 {
        self.counters.cell(server).active()
    }

    #[inline]
    pub(crate) fn max_connections(&self, server: usize) -> u32 {
        self.servers[server].max_connections
    }

    #[inline]
    pub(crate) fn is_full(&self, server: usize) -> bool {
        let max = self.max_connections(server);
        max != 0 && self.active(server) >= max
    }

    /// Reserves a slot on `server`; the new count, or `None` if it is full.
    #[inline]
    pub(crate) fn reserve(&self, server: usize) -> Option<u32> {
        self.counters.cell(server).try_reserve(self.max_connections(server))
    }
}

/// The exact slow path shared by the policies: the first server of `members`, starting at
/// `start` and wrapping around, that is not excluded and takes a reservation.
pub(crate) fn first_fit(ctx: &Ctx<'_>, members: &[u16], start: usize) -> Pick {
    let mut saw_full = false;
    let (tail, head) = members.split_at(start.min(members.len()));
    for &server in head.iter().chain(tail) {
        let server = usize::from(server);
        if ctx.excluded(server) {
            continue;
        }
        if ctx.reserve(server).is_some() {
            return Pick::Server(server);
        }
        saw_full = true;
    }
    if saw_full {
        Pick::AllFull
    } else {
        Pick::NoneUsable
    }
}
