//! Virtual machines: accelerator choice and (with later phases) the QEMU
//! argv builder, QMP client, VDE switch and supervisor.

pub mod accel;
pub mod host_tools;
pub mod qemu;
pub mod qmp;
pub mod rundir;
pub mod supervisor;
pub mod vde;
pub mod wait;
