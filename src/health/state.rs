//! One server's health: rise/fall hysteresis over active check results, and passive detection
//! over the connect outcomes live traffic reports.
//!
//! Pure state: no clock, no I/O, no logging. The prober feeds it events and publishes and logs the
//! transitions it returns, so every rule here is tested without a socket.

/// The thresholds of one pool (`rise`, `fall`, `passive_fall` in `[pools.NAME.health]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive passed checks that bring a down server up.
    pub rise: u32,
    /// Consecutive failed checks that take an up server down.
    pub fall: u32,
    /// Consecutive failed connects seen by traffic that take an up server down; 0 = off.
    pub passive_fall: u32,
}

/// What the checks and the traffic say about a server (an operator's drain is kept apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// One server's health and the streaks that move it. Each counter only counts toward the
/// transition the current state allows, and every transition starts all of them afresh: a server
/// that just came up needs `fall` new failures to go down again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHealth {
    health: Health,
    /// Consecutive passed checks while down.
    passed: u32,
    /// Consecutive failed checks while up.
    failed: u32,
    /// Consecutive failed connects reported by traffic while up.
    connect_failures: u32,
}

impl ServerHealth {
    pub fn new(initial: Health) -> ServerHealth {
        ServerHealth { health: initial, passed: 0, failed: 0, connect_failures: 0 }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// The result of one active check; the new health when it changes.
    pub fn on_check(&mut self, passed: bool, thresholds: &Thresholds) -> Option<Health> {
        match (self.health, passed) {
            (Health::Up, true) => self.failed = 0,
            (Health::Up, false) => {
                self.failed += 1;
                if self.failed >= thresholds.fall {
                    return Some(self.enter(Health::Down));
                }
            }
            (Health::Down, true) => {
                self.passed += 1;
                if self.passed >= thresholds.rise {
                    return Some(self.enter(Health::Up));
                }
            }
            (Health::Down, false) => self.passed = 0,
        }
        None
    }

    /// A connect to the server by live traffic; the new health when it changes. Only ever takes a
    /// server down: traffic to a down server is rare (fail-open) and says little, so the active
    /// checks alone bring it back.
    pub fn on_connect(&mut self, connected: bool, thresholds: &Thresholds) -> Option<Health> {
        if thresholds.passive_fall == 0 || self.health == Health::Down {
            return None;
        }
        if connected {
            self.connect_failures = 0;
            return None;
        }
        self.connect_failures += 1;
        (self.connect_failures >= thresholds.passive_fall).then(|| self.enter(Health::Down))
    }

    fn enter(&mut self, health: Health) -> Health {
        *self = ServerHealth::new(health);
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAPROXY: Thresholds = Thresholds { rise: 2, fall: 3, passive_fall: 3 };

    /// Feeds check results; returns the transitions in order.
    fn checks(health: &mut ServerHealth, results: &[bool]) -> Vec<Health> {
        results.iter().filter_map(|&passed| health.on_check(passed, &HAPROXY)).collect()
    }

    #[test]
    fn an_up_server_goes_down_after_fall_consecutive_failures_exactly_once() {
        let mut h = ServerHealth::new(Health::Up);
        assert_eq!(checks(&mut h, &[false, false]), []);
        assert_eq!(h.health(), Health::Up);
        assert_eq!(h.on_check(false, &HAPROXY), Some(Health::Down));
        // More failures change nothing and say nothing.
        assert_eq!(checks(&mut h, &[false, false, false, false]), []);
        assert_eq!(h.health(), Health::Down);
    }

    #[test]
    fn a_pass_between_failures_restarts_the_fall_count() {
        let mut h = ServerHealth::new(Health::Up);
        assert_eq!(checks(&mut h, &[false, false, true, false, false, true, false, false]), []);
        assert_eq!(h.health(), Health::Up);
    }

    #[test]
    fn a_down_server_comes_back_after_rise_consecutive_passes() {
        let mut h = ServerHealth::new(Health::Down);
        assert_eq!(checks(&mut h, &[true, false, true, false]), [], "no two passes in a row");
        assert_eq!(h.on_check(true, &HAPROXY), None);
        assert_eq!(h.on_check(true, &HAPROXY), Some(Health::Up));
    }

    #[test]
    fn every_transition_starts_the_counts_afresh() {
        let mut h = ServerHealth::new(Health::Up);
        // Two failures, then down, up: the two old failures do not count toward the next fall.
        assert_eq!(checks(&mut h, &[false, false, false, true, true]), [Health::Down, Health::Up]);
        assert_eq!(checks(&mut h, &[false, false]), []);
        assert_eq!(h.health(), Health::Up);
        assert_eq!(checks(&mut h, &[false]), [Health::Down]);
    }

    #[test]
    fn rise_and_fall_of_one_follow_every_check() {
        let eager = Thresholds { rise: 1, fall: 1, passive_fall: 1 };
        let mut h = ServerHealth::new(Health::Up);
        assert_eq!(h.on_check(false, &eager), Some(Health::Down));
        assert_eq!(h.on_check(true, &eager), Some(Health::Up));
        assert_eq!(h.on_connect(false, &eager), Some(Health::Down));
    }

    #[test]
    fn passive_failures_take_a_server_down_at_once() {
        let mut h = ServerHealth::new(Health::Up);
        assert_eq!(h.on_connect(false, &HAPROXY), None);
        assert_eq!(h.on_connect(false, &HAPROXY), None);
        assert_eq!(h.on_connect(false, &HAPROXY), Some(Health::Down));
        assert_eq!(h.on_connect(false, &HAPROXY), None, "already down");
    }

    #[test]
    fn a_successful_connect_restarts_the_passive_count() {
        let mut h = ServerHealth::new(Health::Up);
        for connected in [false, false, true, false, false, true, false, false] {
            assert_eq!(h.on_connect(connected, &HAPROXY), None);
        }
        assert_eq!(h.health(), Health::Up);
    }

    #[test]
    fn only_checks_bring_a_passively_downed_server_back() {
        let mut h = ServerHealth::new(Health::Up);
        for _ in 0..3 {
            h.on_connect(false, &HAPROXY);
        }
        assert_eq!(h.health(), Health::Down);
        for _ in 0..10 {
            assert_eq!(h.on_connect(true, &HAPROXY), None);
        }
        assert_eq!(h.health(), Health::Down);
        assert_eq!(checks(&mut h, &[true, true]), [Health::Up]);
    }

    #[test]
    fn passive_and_active_failures_count_apart() {
        let mut h = ServerHealth::new(Health::Up);
        // Two failed checks and two failed connects: neither streak has reached its threshold.
        assert_eq!(checks(&mut h, &[false, false]), []);
        assert_eq!(h.on_connect(false, &HAPROXY), None);
        assert_eq!(h.on_connect(false, &HAPROXY), None);
        assert_eq!(h.health(), Health::Up);
        // A passed check does not excuse the connect failures traffic saw.
        assert_eq!(h.on_check(true, &HAPROXY), None);
        assert_eq!(h.on_connect(false, &HAPROXY), Some(Health::Down));
    }

    #[test]
    fn passive_detection_off_ignores_traffic() {
        let off = Thresholds { passive_fall: 0, ..HAPROXY };
        let mut h = ServerHealth::new(Health::Up);
        for _ in 0..100 {
            assert_eq!(h.on_connect(false, &off), None);
        }
        assert_eq!(h.health(), Health::Up);
    }

    #[test]
    fn initially_down_servers_earn_rise_passes_and_ignore_traffic() {
        let mut h = ServerHealth::new(Health::Down);
        assert_eq!(h.on_connect(true, &HAPROXY), None);
        assert_eq!(checks(&mut h, &[true]), []);
        assert_eq!(checks(&mut h, &[true]), [Health::Up]);
    }
}
