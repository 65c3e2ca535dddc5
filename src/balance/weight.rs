//! Weights and the slow-start ramp.
//!
//! Owns the one pure function that turns a configured weight into the weight a policy uses at a
//! given moment. Weights are carried in 1/256 units inside the policies ([`WEIGHT_UNIT`]), so that
//! a slow start can ramp even a server of weight 1 smoothly instead of jumping from 1 to 1.

use std::time::Duration;

/// Largest configurable weight.
pub const MAX_WEIGHT: u32 = 256;

/// Policies work in 1/`WEIGHT_UNIT` fractions of a configured weight unit.
pub const WEIGHT_UNIT: u32 = 256;

/// Effective weight, in 1/[`WEIGHT_UNIT`] units, of a server of configured `weight` that came up
/// `since_up` ago and ramps over `slow_start`.
///
/// Linear from the smallest non-zero value (1, i.e. 1/256 of a unit) right after the server comes
/// up, to `weight * WEIGHT_UNIT` once `slow_start` has elapsed. Weight 0 (draining) stays 0, and a
/// zero `slow_start` means no ramp. Weights above [`MAX_WEIGHT`] are clamped.
pub fn effective_weight(weight: u32, slow_start: Duration, since_up: Duration) -> u32 {
    let full = weight.min(MAX_WEIGHT) * WEIGHT_UNIT;
    if full == 0 || slow_start.is_zero() || since_up >= slow_start {
        return full;
    }
    let ramped = u128::from(full) * since_up.as_nanos() / slow_start.as_nanos();
    // ramped < full because since_up < slow_start, so it fits in u32.
    (ramped as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_ramp_is_linear_from_small_to_full_weight() {
        let period = Duration::from_secs(10);
        let w = 100;
        assert_eq!(effective_weight(w, period, Duration::ZERO), 1);
        assert_eq!(effective_weight(w, period, Duration::from_secs(5)), 50 * WEIGHT_UNIT);
        assert_eq!(effective_weight(w, period, Duration::from_millis(2_500)), 25 * WEIGHT_UNIT);
        assert_eq!(effective_weight(w, period, period), 100 * WEIGHT_UNIT);
        assert_eq!(effective_weight(w, period, Duration::from_secs(3600)), 100 * WEIGHT_UNIT);
        // Even weight 1 ramps smoothly.
        assert_eq!(effective_weight(1, period, Duration::from_secs(5)), WEIGHT_UNIT / 2);
    }

    #[test]
    fn slow_start_never_revives_weight_zero_and_zero_period_means_no_ramp() {
        assert_eq!(effective_weight(0, Duration::from_secs(10), Duration::from_secs(5)), 0);
        assert_eq!(effective_weight(0, Duration::ZERO, Duration::ZERO), 0);
        assert_eq!(effective_weight(3, Duration::ZERO, Duration::ZERO), 3 * WEIGHT_UNIT);
        assert_eq!(effective_weight(1000, Duration::ZERO, Duration::ZERO), MAX_WEIGHT * WEIGHT_UNIT);
    }
}
