//! The one place that says what a completion's `user_data` means.
//!
//! Layout (64 bits): `[ gen: 32 | slot: 24 | op: 8 ]`.
//! - `op` names the operation that completed ([`Op`]).
//! - `slot` is the connection slot for connection operations, the listener index for accepts,
//!   and 0 for worker-level operations (tick, wake).
//! - `gen` is the slot's generation when the operation was submitted. A connection slot is
//!   reused only after its last completion has arrived, so `gen` is a cross-check, not a guard.

/// What an in-flight operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Accept on listener `slot` (multishot or single-shot).
    Accept = 1,
    /// Cancel of an accept on listener `slot`.
    AcceptCancel,
    /// The periodic worker tick (timeouts, accept back-off, shutdown grace).
    Tick,
    /// The worker's wake-up eventfd became readable (shutdown or table change).
    Wake,
    /// Multishot readiness poll on the client socket.
    ClientPoll,
    /// Multishot readiness poll on the backend socket.
    BackendPoll,
    /// One-shot POLLOUT on the client socket (b2c destination full).
    ClientPollOut,
    /// One-shot POLLOUT on the backend socket (c2b destination full).
    BackendPollOut,
    /// Splice client socket -> c2b pipe.
    C2bIn,
    /// Splice c2b pipe -> backend socket.
    C2bOut,
    /// Splice backend socket -> b2c pipe.
    B2cIn,
    /// Splice b2c pipe -> client socket.
    B2cOut,
    /// Backend socket creation (first of the linked connect chain).
    Socket,
    /// setsockopt on the backend socket (in the connect chain).
    SockOpt,
    /// Backend connect (in the connect chain).
    Connect,
    /// Link timeout guarding the connect.
    ConnectTimeout,
    /// shutdown(SHUT_WR) of the backend after the client's FIN.
    ShutBackend,
    /// shutdown(SHUT_WR) of the client after the backend's FIN.
    ShutClient,
    /// Cancel of every request on a connection's descriptors.
    Cancel,
    /// Close of a registered descriptor; the slot is already released, result only logged.
    Close,
}

impl Op {
    const ALL: [Op; 20] = [
        Op::Accept,
        Op::AcceptCancel,
        Op::Tick,
        Op::Wake,
        Op::ClientPoll,
        Op::BackendPoll,
        Op::ClientPollOut,
        Op::BackendPollOut,
        Op::C2bIn,
        Op::C2bOut,
        Op::B2cIn,
        Op::B2cOut,
        Op::Socket,
        Op::SockOpt,
        Op::Connect,
        Op::ConnectTimeout,
        Op::ShutBackend,
        Op::ShutClient,
        Op::Cancel,
        Op::Close,
    ];

    fn from_u8(v: u8) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| *op as u8 == v)
    }
}

/// Largest slot index representable in `user_data`.
pub const MAX_SLOT: u32 = (1 << 24) - 1;

#[inline]
pub fn encode(op: Op, slot: u32, gen: u32) -> u64 {
    debug_assert!(slot <= MAX_SLOT);
    (u64::from(gen) << 32) | (u64::from(slot) << 8) | op as u64
}

/// Splits `user_data` into (op, slot, gen); `None` for a value ringlb never submitted.
#[inline]
pub fn decode(user_data: u64) -> Option<(Op, u32, u32)> {
    let op = Op::from_u8((user_data & 0xff) as u8)?;
    Some((op, ((user_data >> 8) & u64::from(MAX_SLOT)) as u32, (user_data >> 32) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_with_extreme_slot_and_gen() {
        for op in Op::ALL {
            for (slot, gen) in [(0, 0), (MAX_SLOT, u32::MAX), (12345, 7)] {
                assert_eq!(decode(encode(op, slot, gen)), Some((op, slot, gen)));
            }
        }
    }

    #[test]
    fn unknown_op_is_rejected() {
        assert_eq!(decode(0), None);
        assert_eq!(decode(0xff), None);
    }
}
