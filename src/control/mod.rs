//! The control plane: signals, host checks, later the prober, admin API and reload.

pub mod hostcheck;
pub mod privdrop;
