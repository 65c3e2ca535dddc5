//! The backend table: one immutable snapshot of every pool and server, published through
//! arc-swap. Workers load it per connection; the control plane builds a new one and swaps it in.
//! Nothing here blocks or allocates on the workers' hot path beyond an `Arc` clone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;

#[derive(Debug)]
pub struct BackendTable {
    pub pools: Vec<PoolTable>,
}

#[derive(Debug)]
pub struct PoolTable {
    pub name: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub servers: Vec<ServerEntry>,
}

#[derive(Debug)]
pub struct ServerEntry {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Health and admin state, as last published by the prober.
    pub state: ServerState,
}

/// A server's state in one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Takes new connections.
    Up,
    /// Failed its checks (or passive detection): no new connections.
    Down,
    /// Set aside by an operator: no new connections, open ones finish.
    Draining,
}

impl ServerEntry {
    /// May receive a new connection (health and weight; policies add their own limits).
    pub fn usable(&self) -> bool {
        self.state == ServerState::Up && self.weight > 0
    }
}

impl BackendTable {
    pub fn from_config(config: &Config) -> BackendTable {
        let pools = config
            .pools
            .iter()
            .map(|p| PoolTable {
                name: p.name.clone(),
                connect_timeout: p.connect_timeout,
                idle_timeout: p.idle_timeout,
                retries: p.retries,
                servers: p
                    .servers
                    .iter()
                    .map(|s| ServerEntry {
                        name: s.name.clone(),
                        addr: s.resolved,
                        weight: s.weight,
                        state: ServerState::Up,
                    })
                    .collect(),
            })
            .collect();
        BackendTable { pools }
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

/// The handle shared by the control plane (writer) and every worker (readers).
pub type SharedTable = Arc<ArcSwap<BackendTable>>;
