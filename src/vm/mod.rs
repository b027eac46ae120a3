//! Virtual machines: accelerator choice, host programs, the QEMU argv
//! builder, the QMP client, the VDE switch, run directories and the
//! supervisor that owns every child process. See `docs/vm.md`.

pub mod accel;
pub mod host_tools;
pub mod qemu;
pub mod qmp;
pub mod rundir;
pub mod supervisor;
pub mod vde;
pub mod wait;
