//! Operator commands on one server (drain, enable, disable), as the admin API sends them to the
//! prober. The prober owns every server's state and is the table's only writer, so a command is a
//! request on a channel that the prober applies, publishes, and only then answers: when the
//! answer arrives, every worker already sees the new state.
//!
//! What the commands mean:
//! - `drain`: no new connections; open ones finish. Checks go on, so `enable` returns the server
//!   to whatever its health is by then.
//! - `disable` (maintenance, as HAProxy's `maint`): no new connections; open ones finish too (ringlb
//!   never cuts a connection on an operator's word). Check results and passive reports are
//!   ignored while disabled, so its health is unknown; `enable` starts it over as at start-up,
//!   in the pool's `initial_state`.
//! - `enable`: ends a drain or a disable.
//!
//! This file holds the types and the channel only; the prober applies the commands.

use tokio::sync::{mpsc, oneshot};

use crate::metrics::HealthView;
use crate::table::ServerState;

/// Requests waiting for the prober; beyond this the admin API answers "busy".
const CAPACITY: usize = 64;

/// What an operator can do to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCommand {
    Drain,
    Enable,
    Disable,
}

impl ServerCommand {
    /// The command named in a URL (`drain`, `enable`, `disable`).
    pub fn parse(name: &str) -> Option<ServerCommand> {
        match name {
            "drain" => Some(ServerCommand::Drain),
            "enable" => Some(ServerCommand::Enable),
            "disable" => Some(ServerCommand::Disable),
            _ => None,
        }
    }
}

/// What an operator set on a server, kept apart from its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AdminState {
    Active,
    Draining,
    Disabled,
}

/// A server after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerChange {
    pub pool: String,
    pub server: String,
    /// The state published for it now.
    pub state: ServerState,
    /// What its checks say (unknown while disabled).
    pub health: HealthView,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no pool named {0:?}")]
    NoSuchPool(String),
    #[error("pool {pool} has no server named {server:?}")]
    NoSuchServer { pool: String, server: String },
    #[error("too many commands waiting for the health prober; try again")]
    Busy,
    #[error("the health prober is not running")]
    Stopped,
}

/// One command on its way to the prober, with where the answer goes.
pub(super) struct Request {
    pub pool: String,
    pub server: String,
    pub command: ServerCommand,
    pub reply: oneshot::Sender<Result<ServerChange, CommandError>>,
}

/// The admin API's handle on the prober: sends server commands and waits for their answers.
#[derive(Debug, Clone)]
pub struct ServerControl {
    sender: mpsc::Sender<Request>,
}

impl ServerControl {
    pub(super) fn channel() -> (ServerControl, mpsc::Receiver<Request>) {
        let (sender, receiver) = mpsc::channel(CAPACITY);
        (ServerControl { sender }, receiver)
    }

    /// Applies `command` to server `server` of pool `pool`; returns once the new state is
    /// published.
    pub async fn apply(&self, pool: &str, server: &str, command: ServerCommand) -> Result<ServerChange, CommandError> {
        let (reply, answer) = oneshot::channel();
        let request = Request { pool: pool.to_owned(), server: server.to_owned(), command, reply };
        self.sender.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommandError::Busy,
            mpsc::error::TrySendError::Closed(_) => CommandError::Stopped,
        })?;
        answer.await.unwrap_or(Err(CommandError::Stopped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_in_lowercase_only() {
        assert_eq!(ServerCommand::parse("drain"), Some(ServerCommand::Drain));
        assert_eq!(ServerCommand::parse("enable"), Some(ServerCommand::Enable));
        assert_eq!(ServerCommand::parse("disable"), Some(ServerCommand::Disable));
        assert_eq!(ServerCommand::parse("Drain"), None);
        assert_eq!(ServerCommand::parse(""), None);
    }

    #[test]
    fn a_stopped_prober_is_reported_not_waited_for() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (control, receiver) = ServerControl::channel();
        drop(receiver);
        let result = runtime.block_on(control.apply("web", "a", ServerCommand::Drain));
        assert_eq!(result, Err(CommandError::Stopped));
    }
}
