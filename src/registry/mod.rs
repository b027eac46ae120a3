//! Image generations in OCI registries: `cygvm push`, `cygvm pull`, and the
//! local store `cygvm run --image REGISTRY/REPO@sha256:…` runs from.
//!
//! See docs/registry.md. The artifact's layout is in [`artifact`], the
//! HTTP API in [`client`], the store in [`store`].

pub mod artifact;
pub mod auth;
pub mod client;
pub mod progress;
pub mod pull;
pub mod push;
pub mod reference;
pub mod store;

pub use pull::{PullOptions, Pulled, pull};
pub use push::{PushOptions, Pushed, push};
pub use reference::{ImageSource, Reference};
