//! When each server is checked: a grid of ticks (see [`tick`]), each server due every `period`
//! ticks from a random phase.
//!
//! Why a grid: the prober wakes once per tick and starts every check due in it, instead of once
//! per check. Waking costs more than it seems: measured on the development machine, the same
//! 1,000 checks a second cost 5.7 % of a core started in batches every 10 ms, 3.9 % every 50 ms
//! (a CPU woken from idle is slow). Why a random phase: the checks of many servers spread evenly
//! over the interval (and two balancers checking the same servers do not check them in step). A
//! period is the interval rounded down to whole ticks, so checks of one server are never further
//! apart than `interval` (unless a check outlasts it, and then the next one starts as soon as it
//! ends): a server that dies is marked down by the `fall`th failed check, within
//! `fall x interval + timeout`.
//!
//! Pure: ticks are numbers, the prober turns instants into them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// The grid step when every interval is at least this long.
pub const MAX_TICK: Duration = Duration::from_millis(50);

/// The grid step for checks every `intervals`: [`MAX_TICK`], or the shortest interval when that
/// is shorter (so that no interval is ever stretched), but at least a millisecond.
pub fn tick(intervals: impl IntoIterator<Item = Duration>) -> Duration {
    intervals.into_iter().fold(MAX_TICK, Duration::min).max(Duration::from_millis(1))
}

/// Whole ticks in `interval`, at least one.
pub fn period_ticks(interval: Duration, tick: Duration) -> u64 {
    (interval.as_nanos() / tick.as_nanos().max(1)).max(1) as u64
}

/// The checks waiting for their tick; a running check is not in it.
pub struct Schedule {
    /// (due tick, check index), earliest first.
    due: BinaryHeap<Reverse<(u64, usize)>>,
    periods: Vec<u64>,
}

impl Schedule {
    /// Check `i` every `periods[i]` ticks, first at a random tick of its first period.
    pub fn new(periods: Vec<u64>, rng: &mut Rng) -> Schedule {
        let due = periods.iter().enumerate().map(|(i, &period)| Reverse((rng.below(period), i))).collect();
        Schedule { due, periods }
    }

    /// The next check due at or before `tick`, with the tick it was due at; it leaves the
    /// schedule until [`Schedule::finished`].
    pub fn pop_due(&mut self, tick: u64) -> Option<(usize, u64)> {
        let &Reverse((due, check)) = self.due.peek()?;
        if due > tick {
            return None;
        }
        self.due.pop();
        Some((check, due))
    }

    /// Check `check`, due at `due`, finished during tick `now`. Its next check is due one period
    /// after `due`; when that tick has passed already (the check outlasted its period) it is due
    /// at once, and `Some(now)` says to start it now rather than wait for the next tick.
    pub fn finished(&mut self, check: usize, due: u64, now: u64) -> Option<u64> {
        let next = due + self.periods[check];
        if next <= now {
            return Some(now);
        }
        self.due.push(Reverse((next, check)));
        None
    }
}

/// xorshift64*: enough randomness to spread checks, without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn from_clock() -> Rng {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Rng::new(nanos as u64 ^ (u64::from(std::process::id()) << 32))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (check, due tick) popped over ticks `0..ticks`, each check finishing in its tick.
    fn run(schedule: &mut Schedule, ticks: u64) -> Vec<(usize, u64)> {
        let mut started = Vec::new();
        for tick in 0..ticks {
            while let Some((check, due)) = schedule.pop_due(tick) {
                assert_eq!(due, tick, "checks start in their own tick when nothing runs late");
                started.push((check, due));
                assert_eq!(schedule.finished(check, due, tick), None);
            }
        }
        started
    }

    #[test]
    fn the_tick_is_50ms_unless_an_interval_is_shorter() {
        let ms = Duration::from_millis;
        assert_eq!(tick([ms(2000), ms(1000)]), ms(50));
        assert_eq!(tick([]), ms(50));
        assert_eq!(tick([ms(2000), ms(20)]), ms(20));
        assert_eq!(tick([Duration::from_micros(10)]), ms(1));
    }

    #[test]
    fn periods_never_exceed_the_interval() {
        let ms = Duration::from_millis;
        assert_eq!(period_ticks(ms(2000), ms(50)), 40);
        assert_eq!(period_ticks(ms(230), ms(50)), 4);
        assert_eq!(period_ticks(ms(20), ms(20)), 1);
        for interval in 1..3000 {
            let tick = tick([ms(interval), ms(5000)]);
            let period = period_ticks(ms(interval), tick);
            assert!(period >= 1 && tick * period as u32 <= ms(interval), "{interval}ms");
        }
    }

    #[test]
    fn each_check_comes_back_every_period_from_its_phase() {
        let mut schedule = Schedule::new(vec![20, 7], &mut Rng::new(1));
        let started = run(&mut schedule, 200);
        for (check, period) in [(0, 20), (1, 7)] {
            let ticks: Vec<u64> = started.iter().filter(|(c, _)| *c == check).map(|&(_, t)| t).collect();
            assert!(ticks[0] < period, "first check within the first period: {ticks:?}");
            assert!(ticks.windows(2).all(|w| w[1] - w[0] == period), "{ticks:?}");
            assert_eq!(ticks.len() as u64, (200 - ticks[0]).div_ceil(period));
        }
    }

    #[test]
    fn a_check_that_outlasts_its_period_goes_again_at_once() {
        let mut schedule = Schedule::new(vec![10], &mut Rng::new(7));
        let (check, due) = (0..10).find_map(|t| schedule.pop_due(t)).expect("due in the first period");
        // It ran for 15 ticks: its next slot has passed.
        assert_eq!(schedule.finished(check, due, due + 15), Some(due + 15));
        assert_eq!(schedule.pop_due(u64::MAX), None, "not queued as well");
        // One that ends within its period waits for its slot.
        assert_eq!(schedule.finished(check, due + 15, due + 20), None);
        assert_eq!(schedule.pop_due(due + 24), None);
        assert_eq!(schedule.pop_due(due + 25), Some((check, due + 25)));
    }

    #[test]
    fn a_thousand_servers_spread_over_the_interval() {
        let periods = vec![100; 1000];
        let mut schedule = Schedule::new(periods, &mut Rng::from_clock());
        let mut per_tick = [0u32; 100];
        for (_, due) in run(&mut schedule, 100) {
            per_tick[due as usize] += 1;
        }
        assert_eq!(per_tick.iter().sum::<u32>(), 1000);
        // 10 per tick on average; random phases never pile up anywhere near all at once.
        assert!(per_tick.iter().all(|&n| n <= 40), "{per_tick:?}");
        assert!(per_tick.iter().filter(|&&n| n > 0).count() >= 90, "{per_tick:?}");
    }
}
