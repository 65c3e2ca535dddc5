//! The control plane: signals, host checks and privilege dropping; later the prober, the admin
//! API and reload. It talks to the data path only through the published backend table, metric
//! handles and the shutdown signal.

pub mod hostcheck;
pub mod privdrop;
pub mod reload;
pub mod signals;
