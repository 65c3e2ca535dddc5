//! The control plane's OS plumbing: signals, host checks, privilege dropping and the pid file
//! (the prober and the admin API have modules of their own; reload orchestration is
//! [`crate::reload`], next to `main`). Nothing here imports the data path.

pub mod hostcheck;
pub mod pidfile;
pub mod privdrop;
pub mod signals;
