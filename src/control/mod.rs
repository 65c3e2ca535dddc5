//! The control plane: signals, host checks, privilege dropping and the pid file (the prober and
//! the admin API have modules of their own). It talks to the data path only through the
//! published backend table, metric handles and the shutdown signal.

pub mod hostcheck;
pub mod pidfile;
pub mod privdrop;
pub mod reload;
pub mod signals;
