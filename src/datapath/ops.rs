//! The one place that says what a completion's `user_data` means.
//!
//! Layout (64 bits): `[ gen: 32 | slot: 24 | op: 8 ]`, declared as [`crate::uring::Field`]s.
//! - `op` names the operation that completed ([`Op`]).
//! - `slot` is the connection slot for connection operations, the listener index for accepts,
//!   and 0 for worker-level operations (tick, wake, close).
//! - `gen` is the slot's generation when the operation was submitted. A connection slot is
//!   reused only after its last completion has arrived, so `gen` is a cross-check, not a guard.

use super::direction::Dir;
use super::flow::FlowOp;
use crate::uring::{Field, OpKind};

const OP: Field = Field::new(0, 8);
const SLOT: Field = Field::new(8, 24);
const GEN: Field = Field::new(32, 32);

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
    /// The worker's wake-up eventfd became readable (shutdown or a control message).
    Wake,
    /// Close of a registered descriptor whose owner is already gone; the result is only logged.
    Close,
    /// The connect chain: socket creation, setsockopt, connect, and the link timeout guarding it.
    Socket,
    SockOpt,
    Connect,
    ConnectTimeout,
    /// The client -> backend flow: POLLIN on the client, POLLOUT on the backend, read from the
    /// client, write to the backend, shutdown(SHUT_WR) of the backend.
    C2bPollIn,
    C2bPollOut,
    C2bRead,
    C2bWrite,
    C2bShutdown,
    /// The backend -> client flow, likewise.
    B2cPollIn,
    B2cPollOut,
    B2cRead,
    B2cWrite,
    B2cShutdown,
    /// Cancel of one of a connection's requests (teardown).
    Cancel,
}

impl Op {
    const ALL: [Op; 20] = [
        Op::Accept,
        Op::AcceptCancel,
        Op::Tick,
        Op::Wake,
        Op::Close,
        Op::Socket,
        Op::SockOpt,
        Op::Connect,
        Op::ConnectTimeout,
        Op::C2bPollIn,
        Op::C2bPollOut,
        Op::C2bRead,
        Op::C2bWrite,
        Op::C2bShutdown,
        Op::B2cPollIn,
        Op::B2cPollOut,
        Op::B2cRead,
        Op::B2cWrite,
        Op::B2cShutdown,
        Op::Cancel,
    ];

    /// The operation `kind` of the flow `dir`.
    pub fn flow(dir: Dir, kind: FlowOp) -> Op {
        use FlowOp::*;
        match (dir, kind) {
            (Dir::C2b, PollIn) => Op::C2bPollIn,
            (Dir::C2b, PollOut) => Op::C2bPollOut,
            (Dir::C2b, Read) => Op::C2bRead,
            (Dir::C2b, Write) => Op::C2bWrite,
            (Dir::C2b, Shutdown) => Op::C2bShutdown,
            (Dir::B2c, PollIn) => Op::B2cPollIn,
            (Dir::B2c, PollOut) => Op::B2cPollOut,
            (Dir::B2c, Read) => Op::B2cRead,
            (Dir::B2c, Write) => Op::B2cWrite,
            (Dir::B2c, Shutdown) => Op::B2cShutdown,
        }
    }

    /// The flow and kind of a flow operation; `None` for every other operation.
    pub fn as_flow(self) -> Option<(Dir, FlowOp)> {
        use FlowOp::*;
        Some(match self {
            Op::C2bPollIn => (Dir::C2b, PollIn),
            Op::C2bPollOut => (Dir::C2b, PollOut),
            Op::C2bRead => (Dir::C2b, Read),
            Op::C2bWrite => (Dir::C2b, Write),
            Op::C2bShutdown => (Dir::C2b, Shutdown),
            Op::B2cPollIn => (Dir::B2c, PollIn),
            Op::B2cPollOut => (Dir::B2c, PollOut),
            Op::B2cRead => (Dir::B2c, Read),
            Op::B2cWrite => (Dir::B2c, Write),
            Op::B2cShutdown => (Dir::B2c, Shutdown),
            _ => return None,
        })
    }
}

impl OpKind for Op {
    const KINDS: &'static [Op] = &Op::ALL;

    fn code(self) -> u64 {
        self as u64
    }
}

/// Largest slot index representable in `user_data`.
pub const MAX_SLOT: u32 = SLOT.max() as u32;

#[inline]
pub fn encode(op: Op, slot: u32, gen: u32) -> u64 {
    GEN.pack(u64::from(gen)) | SLOT.pack(u64::from(slot)) | OP.pack(op.code())
}

/// Splits `user_data` into (op, slot, gen); `None` for a value ringlb never submitted.
#[inline]
pub fn decode(user_data: u64) -> Option<(Op, u32, u32)> {
    let op = Op::from_code(OP.unpack(user_data))?;
    Some((op, SLOT.unpack(user_data) as u32, GEN.unpack(user_data) as u32))
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

    #[test]
    fn flow_ops_name_one_direction_and_kind_each() {
        use FlowOp::*;
        let mut seen = Vec::new();
        for dir in Dir::BOTH {
            for kind in [PollIn, PollOut, Read, Write, Shutdown] {
                let op = Op::flow(dir, kind);
                assert_eq!(op.as_flow(), Some((dir, kind)));
                assert!(!seen.contains(&op));
                seen.push(op);
            }
        }
        assert_eq!(Op::Connect.as_flow(), None);
    }
}
