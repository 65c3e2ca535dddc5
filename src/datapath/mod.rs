//! The data path: per-core io_uring workers. Depends only on config, the backend table and metrics.
