//! cygvm: a Windows + Cygwin build machine in seconds, from a Linux host.
//!
//! The library holds every piece; `main.rs` only parses arguments and prints
//! errors. See `docs/` and the design notes for the shape of the whole.

pub mod agent;
pub mod cache;
pub mod cli;
pub mod config;
pub mod controller;
pub mod cygport;
pub mod cygwin;
pub mod derived;
pub mod doctor;
pub mod events;
pub mod fsutil;
pub mod guest;
pub mod image;
pub mod media;
pub mod phases;
pub mod prune;
pub mod registry;
pub mod secrets;
pub mod snapshot;
pub mod vm;
