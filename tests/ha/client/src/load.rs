//! The load: held connections probed at a fixed period, and new connections at a fixed rate.
//!
//! Owns the tasks that talk to the target. Every loop ends at the deadline it is given, every
//! attempt is bounded by the attempt timeout, and the number of new connections in flight is
//! capped, so a dead target can neither make the client run forever nor pile up sockets.
//! It must never connect anywhere but the one target.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, timeout, Instant, MissedTickBehavior};

use crate::http::{self, Failure};
use crate::record::{Class, Recorder};

/// Pause before a lost held connection connects again (a client's reconnect back-off).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Held connections opened per second at start, so that the start is not a SYN flood.
const HELD_OPEN_RATE: u32 = 1000;
/// New connections in flight beyond this are not started (counted as skipped).
const MAX_IN_FLIGHT: usize = 5000;

#[derive(Clone)]
pub struct Plan {
    pub target: SocketAddr,
    pub sources: Vec<Ipv4Addr>,
    pub held: usize,
    pub rate: u32,
    pub probe_every: Duration,
    pub attempt_timeout: Duration,
    pub deadline: Instant,
}

impl Plan {
    fn source_index(&self, i: usize) -> usize {
        i % self.sources.len()
    }

    fn source(&self, i: usize) -> Ipv4Addr {
        self.sources[self.source_index(i)]
    }
}

/// One held connection: connect, then one keep-alive request every `probe_every`; when it is
/// lost (reset, closed, no answer), record why and connect again.
pub async fn held(plan: Arc<Plan>, recorder: Arc<Recorder>, id: usize) {
    let stagger = Duration::from_secs_f64(id as f64 / f64::from(HELD_OPEN_RATE));
    sleep(stagger).await;
    // Spread the probes of all held connections evenly over the period.
    let phase = plan.probe_every.mul_f64(id as f64 / plan.held.max(1) as f64);
    let mut buf = Vec::with_capacity(512);
    while Instant::now() < plan.deadline {
        let start = recorder.now_us();
        let connected = timeout(plan.attempt_timeout, http::connect(plan.source(id), plan.target)).await;
        let mut stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(failure)) => {
                recorder.record(Class::HeldConnect, start, plan.source_index(id), Err(failure));
                sleep(RECONNECT_PAUSE).await;
                continue;
            }
            Err(_) => {
                recorder.record(Class::HeldConnect, start, plan.source_index(id), Err(Failure::Timeout));
                continue;
            }
        };
        recorder.held_opened();
        let mut next = Instant::now() + phase;
        loop {
            sleep_until(next).await;
            next += plan.probe_every;
            if Instant::now() >= plan.deadline {
                recorder.held_lost();
                return;
            }
            let start = recorder.now_us();
            match timeout(plan.attempt_timeout, http::exchange(&mut stream, &mut buf, false)).await {
                Ok(Ok(name)) => recorder.record(Class::HeldProbe, start, plan.source_index(id), Ok(&name)),
                Ok(Err(failure)) => {
                    recorder.record(Class::HeldProbe, start, plan.source_index(id), Err(failure));
                    break;
                }
                Err(_) => {
                    recorder.record(Class::HeldProbe, start, plan.source_index(id), Err(Failure::Timeout));
                    break;
                }
            }
        }
        recorder.held_lost();
        sleep(RECONNECT_PAUSE).await;
    }
}

/// Starts `rate` new connections per second until the deadline; returns how many were skipped
/// because too many were in flight.
pub async fn fresh(plan: Arc<Plan>, recorder: Arc<Recorder>) -> u64 {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(plan.rate.max(1))));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut skipped = 0;
    let mut n = 0usize;
    loop {
        ticks.tick().await;
        if Instant::now() >= plan.deadline {
            break;
        }
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            skipped += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (plan, recorder, in_flight) = (plan.clone(), recorder.clone(), in_flight.clone());
        n += 1;
        tokio::spawn(async move {
            let start = recorder.now_us();
            let outcome = timeout(plan.attempt_timeout, one_new(plan.source(n), plan.target)).await;
            match outcome {
                Ok(Ok(name)) => recorder.record(Class::New, start, plan.source_index(n), Ok(&name)),
                Ok(Err(failure)) => recorder.record(Class::New, start, plan.source_index(n), Err(failure)),
                Err(_) => recorder.record(Class::New, start, plan.source_index(n), Err(Failure::Timeout)),
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Let the attempts in flight finish (each is bounded by the attempt timeout).
    let drain_until = Instant::now() + plan.attempt_timeout + Duration::from_millis(500);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
        sleep(Duration::from_millis(20)).await;
    }
    skipped
}

async fn one_new(source: Ipv4Addr, target: SocketAddr) -> Result<String, Failure> {
    let mut stream = http::connect(source, target).await?;
    let mut buf = Vec::with_capacity(512);
    http::exchange(&mut stream, &mut buf, true).await
}
