//! The per-worker random number generator of the balancing policies.
//!
//! Owns a SplitMix64 generator: one add and one mix per draw, no shared state, fully determined
//! by its seed (so tests replay exactly). It is not cryptographic and must never be used for
//! anything a client could exploit by predicting it.

use super::hash::mix;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng { state: mix(seed ^ 0x5eed_5eed_5eed_5eed) }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A value in `0..n` (`n > 0`), by multiply-and-shift (bias below 2^-32 for any `n < 2^32`).
    #[inline]
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_below_stays_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let mut seen = [false; 5];
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let v = a.below(5);
            b.below(5);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
