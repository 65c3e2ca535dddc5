//! Balancing policies: which server of a pool gets the next client connection.
//!
//! Pure code: no I/O, no locks, no clock reads, no allocation per pick.

mod counters;
pub mod hash;
mod rng;
mod weight;

pub use counters::{ServerCell, ServerCounters};
pub use weight::{effective_weight, MAX_WEIGHT, WEIGHT_UNIT};
