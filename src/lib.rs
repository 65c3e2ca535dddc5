//! ringlb: a high-availability L4 TCP load balancer for Linux on io_uring.
//!
//! (Architecture picture and glossary: see README.md until filled in here.)

pub mod balance;
pub mod config;
pub mod control;
pub mod datapath;
pub mod demo_backend;
pub mod table;
