//! The two directions of a proxied connection, and what each one reads from and writes to.

use crate::metrics::Direction;

/// A direction: client -> backend or backend -> client. Each is one [`super::flow::Flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    C2b,
    B2c,
}

/// Which socket of a connection an operation touched (for a failure: which side failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::C2b, Dir::B2c];

    /// Its index in per-direction arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn other(self) -> Dir {
        match self {
            Dir::C2b => Dir::B2c,
            Dir::B2c => Dir::C2b,
        }
    }

    /// The side it reads from.
    pub fn source(self) -> Side {
        match self {
            Dir::C2b => Side::Client,
            Dir::B2c => Side::Backend,
        }
    }

    /// The side it writes to.
    pub fn destination(self) -> Side {
        match self {
            Dir::C2b => Side::Backend,
            Dir::B2c => Side::Client,
        }
    }

    /// (source, destination) registered slots, given the connection's two sockets.
    pub fn ends(self, client: u32, backend: u32) -> (u32, u32) {
        match self {
            Dir::C2b => (client, backend),
            Dir::B2c => (backend, client),
        }
    }

    /// Its name in the byte counters.
    pub fn metric(self) -> Direction {
        match self {
            Dir::C2b => Direction::ClientToBackend,
            Dir::B2c => Direction::BackendToClient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_direction_reads_where_the_other_writes() {
        for dir in Dir::BOTH {
            assert_eq!(dir.source(), dir.other().destination());
            assert_eq!(dir.other().other(), dir);
            let (src, dst) = dir.ends(1, 2);
            assert_eq!(dir.other().ends(1, 2), (dst, src));
        }
        assert_eq!(Dir::C2b.ends(7, 9), (7, 9));
        assert_ne!(Dir::C2b.index(), Dir::B2c.index());
    }
}
