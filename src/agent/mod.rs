//! The controller agent and its protocol. The agent runs inside the
//! controller VM, speaks JSON lines with the host over a virtio-serial port
//! (see docs/protocol.md) and does the SSH work against the guest: waiting
//! for sshd, checking the pinned host key, running commands and streaming
//! their output back.

pub mod client;
pub mod protocol;
pub mod server;
pub mod ssh;
