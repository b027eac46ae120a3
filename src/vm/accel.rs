//! KVM or TCG. `/dev/kvm` existing is not enough: some hosts expose it but
//! cannot run a real guest. We open it, check that it offers the CPU
//! features Windows and a current Linux kernel need (x86-64-v2: SSE3, SSSE3,
//! SSE4.1, SSE4.2, POPCNT, CX16), create a VM and a vCPU, and run one `hlt`
//! instruction at the reset vector; only a clean HLT exit counts.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The value for QEMU's `-accel`.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qemu_name())
    }
}

/// Picks KVM when it can run a guest, TCG otherwise, with the reason.
pub fn choose() -> (Accel, String) {
    match probe_kvm(Path::new("/dev/kvm")) {
        Ok(()) => (Accel::Kvm, "KVM runs guests on this host".into()),
        Err(why) => (Accel::Tcg, format!("using TCG software emulation: {why}")),
    }
}

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_GET_SUPPORTED_CPUID: libc::c_ulong = 0xC008_AE05;
const KVM_EXIT_HLT: u32 = 5;

#[repr(C)]
struct UserMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

/// An anonymous mapping unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<&OwnedFd>) -> Result<Self, String> {
        let (flags, raw) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping with no aliasing; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap failed: {}", std::io::Error::last_os_error()));
        }
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

fn ioctl(fd: libc::c_int, req: libc::c_ulong, arg: libc::c_ulong) -> Result<libc::c_int, String> {
    // SAFETY: every request used here takes either an integer or a pointer
    // to a live, correctly sized struct.
    let r = unsafe { libc::ioctl(fd, req, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error().to_string())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: fd was just returned by a successful ioctl and is ours alone.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Runs a one-instruction guest. `Err` says which step failed.
pub fn probe_kvm(dev: &Path) -> Result<(), String> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))?;
    let kfd = kvm.as_raw_fd();
    let api =
        ioctl(kfd, KVM_GET_API_VERSION, 0).map_err(|e| format!("KVM_GET_API_VERSION: {e}"))?;
    if api != 12 {
        return Err(format!("unexpected KVM API version {api}"));
    }
    check_cpu_features(kfd)?;
    let vm = owned(ioctl(kfd, KVM_CREATE_VM, 0).map_err(|e| format!("cannot create a VM: {e}"))?);

    // One page at the top of the 32-bit space: the reset vector 0xFFFFFFF0.
    const PAGE: usize = 4096;
    let mem = Mapping::new(PAGE, None)?;
    // SAFETY: mem is a writable PAGE-sized mapping.
    unsafe {
        std::ptr::write_bytes(mem.ptr as *mut u8, 0xF4, PAGE); // hlt everywhere
    }
    let region = UserMemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0xFFFF_F000,
        memory_size: PAGE as u64,
        userspace_addr: mem.ptr as u64,
    };
    ioctl(
        vm.as_raw_fd(),
        KVM_SET_USER_MEMORY_REGION,
        &region as *const _ as libc::c_ulong,
    )
    .map_err(|e| format!("cannot give the VM memory: {e}"))?;
    let vcpu = owned(
        ioctl(vm.as_raw_fd(), KVM_CREATE_VCPU, 0)
            .map_err(|e| format!("cannot create a vCPU: {e}"))?,
    );
    let run_size = ioctl(kfd, KVM_GET_VCPU_MMAP_SIZE, 0)
        .map_err(|e| format!("KVM_GET_VCPU_MMAP_SIZE: {e}"))?;
    let run = Mapping::new(run_size as usize, Some(&vcpu))?;
    ioctl(vcpu.as_raw_fd(), KVM_RUN, 0).map_err(|e| format!("the vCPU cannot run: {e}"))?;
    // SAFETY: struct kvm_run starts with request_interrupt_window (u8),
    // immediate_exit (u8), padding (6 bytes), then exit_reason (u32).
    let exit_reason =
        unsafe { std::ptr::read_volatile((run.ptr as *const u8).add(8) as *const u32) };
    if exit_reason == KVM_EXIT_HLT {
        Ok(())
    } else {
        Err(format!(
            "the test guest stopped with KVM exit reason {exit_reason}, not HLT"
        ))
    }
}

/// CPUID leaf 1 ECX bits of x86-64-v2, which Windows 11 24H2 and
/// current Linux kernels need.
const REQUIRED_LEAF1_ECX: [(u32, &str); 6] = [
    (0, "sse3"),
    (9, "ssse3"),
    (13, "cx16"),
    (19, "sse4.1"),
    (20, "sse4.2"),
    (23, "popcnt"),
];

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CpuidEntry2 {
    function: u32,
    index: u32,
    flags: u32,
    eax: u32,
    ebx: u32,
    ecx: u32,
    edx: u32,
    padding: [u32; 3],
}

#[repr(C)]
struct Cpuid2 {
    nent: u32,
    padding: u32,
    entries: [CpuidEntry2; 256],
}

fn check_cpu_features(kvm: libc::c_int) -> Result<(), String> {
    let mut cpuid = Box::new(Cpuid2 {
        nent: 256,
        padding: 0,
        entries: [CpuidEntry2::default(); 256],
    });
    ioctl(
        kvm,
        KVM_GET_SUPPORTED_CPUID,
        &mut *cpuid as *mut Cpuid2 as libc::c_ulong,
    )
    .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let count = (cpuid.nent as usize).min(cpuid.entries.len());
    let leaf1 = cpuid.entries[..count]
        .iter()
        .find(|e| e.function == 1)
        .ok_or("KVM reports no CPUID leaf 1")?;
    let missing: Vec<&str> = REQUIRED_LEAF1_ECX
        .iter()
        .filter(|(bit, _)| leaf1.ecx & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "KVM cannot give guests the CPU features they need (missing: {})",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_reported() {
        let err = probe_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(err.contains("cannot open /nonexistent/kvm"), "{err}");
    }

    #[test]
    fn choice_is_explained() {
        let (accel, why) = choose();
        match accel {
            Accel::Kvm => assert!(why.contains("KVM")),
            Accel::Tcg => assert!(why.starts_with("using TCG")),
        }
    }
}
