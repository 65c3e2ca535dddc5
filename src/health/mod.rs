//! Health checks: which servers may take new connections.
//!
//! A control-plane module. One prober thread checks every server concurrently (TCP connect, HTTP
//! status or send/expect, `[pools.NAME.health]`), applies rise/fall hysteresis, and takes a server
//! down at once when live traffic reports `passive_fall` consecutive connect failures. It owns every
//! server's health and is the single writer of the backend table: each change of state publishes
//! one new snapshot and is logged once.
//!
//! It talks to the data path only through that table (the snapshot it publishes, and the bounded
//! channel in it on which workers report connect outcomes without ever blocking). It never touches
//! a connection, and nothing in the data path imports it.
//!
//! Operators drain, disable and enable servers through the same single writer: the admin API sends
//! commands on a channel (`commands`) that the prober applies and publishes.
//!
//! Files: `state` (hysteresis, pure), `schedule` (when each server is checked, pure), `checks`
//! (what each kind of check sends and how it judges the reply, pure), `ring` (the checks' I/O on
//! one io_uring), `commands` (the operator commands and their channel), `prober` (the thread, its
//! event loop and the checks of one configuration), `registry` (every server's health, the single
//! writer that builds, publishes and logs the table).

mod checks;
mod commands;
mod prober;
mod registry;
mod ring;
mod schedule;
mod state;

pub use commands::{CommandError, ServerChange, ServerCommand, ServerControl};
pub use prober::{HealthError, Prober, RunningProber};
