//! The initrd builder, the controller VM and the linux-standin guest.
//!
//! Archive tests always run and check the cpio against independent readers
//! (Debian's `cpio`). The VM tests boot the real kernel under QEMU (TCG) on a
//! real vde_switch with real smbd and dropbear; they are `#[ignore]`d so
//! `cargo test` stays fast, and `.ci/run` runs them with `--include-ignored`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cygvm::controller::{self, HostParts, InitrdBuilder, READY_LINE};

const VM_TEST: &str = "boots QEMU under TCG; run by .ci/run with --include-ignored";

fn parts() -> HostParts {
    HostParts::from_host().expect("host has a kernel, busybox, smbd and dropbear")
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---------------------------------------------------------------- archives

/// A small archive read back by GNU cpio: names, types, modes and contents
/// are what was added, parents exist, and the layout is merged-/usr.
#[test]
fn cpio_archive_reads_back_with_gnu_cpio() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hello.txt");
    std::fs::write(&src, b"hello from the host\n").unwrap();
    let mut b = InitrdBuilder::new();
    b.add_file("/etc/hello.txt", &src, 0o640).unwrap();
    b.add_bytes("/init", "#!/bin/sh\necho hi\n", 0o755).unwrap();
    b.add_bytes("/bin/tool", vec![0u8; 5], 0o755).unwrap();
    b.add_symlink("/etc/link", "hello.txt").unwrap();
    b.add_dir("/var/lib/deep/private", 0o700).unwrap();
    let archive = dir.path().join("a.cpio");
    b.write_cpio(std::fs::File::create(&archive).unwrap())
        .unwrap();

    let listing = String::from_utf8(run_ok(
        Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&archive),
    ))
    .unwrap();
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| {
                let before_arrow = l.split(" -> ").next().unwrap_or(l);
                before_arrow.ends_with(&format!(" {name}"))
            })
            .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
            .to_string()
    };
    assert!(line("etc/hello.txt").starts_with("-rw-r-----"));
    assert!(line("init").starts_with("-rwxr-xr-x"));
    assert!(
        line("usr/bin/tool").starts_with("-rwxr-xr-x"),
        "/bin is merged into /usr"
    );
    assert!(line("bin").starts_with("lrwxrwxrwx") && line("bin").ends_with("-> usr/bin"));
    assert!(line("etc/link").ends_with("-> hello.txt"));
    assert!(line("var/lib/deep/private").starts_with("drwx------"));
    assert!(
        line("var/lib/deep").starts_with("drwxr-xr-x"),
        "parents are added"
    );
    assert!(line("dev/console").starts_with("crw-------"));

    // Contents, extracted by cpio itself.
    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    run_ok(
        Command::new("cpio")
            .current_dir(&out)
            .args(["-idm", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&archive)
            .args(["etc/*", "init"]),
    );
    assert_eq!(
        std::fs::read(out.join("etc/hello.txt")).unwrap(),
        b"hello from the host\n"
    );
    assert_eq!(
        std::fs::read_link(out.join("etc/link")).unwrap(),
        Path::new("hello.txt")
    );
    let mode = std::fs::metadata(out.join("init"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}

/// Same inputs, same bytes; the gzip header carries no time or name.
#[test]
fn archives_are_deterministic() {
    let make = || {
        let mut b = InitrdBuilder::new();
        b.add_bytes("/z", "last", 0o644).unwrap();
        b.add_bytes("/a/b", "first", 0o600).unwrap();
        b.write_gzip(Vec::new()).unwrap()
    };
    let one = make();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(one, make());
    assert_eq!(&one[4..8], &[0, 0, 0, 0], "gzip mtime is 0");
}

/// The dependency closure of the stand-in's modules on the installed
/// kernel: cifs comes after everything it needs, nothing twice, and the
/// order file lists exactly what was added.
#[test]
fn module_closure_follows_real_modules_dep() {
    let parts = parts();
    let mut b = InitrdBuilder::new();
    let names = controller::module_names(controller::files::STANDIN_MODULES);
    let order = b.add_kernel_modules(&parts.kernel, &names).unwrap();
    let pos = |suffix: &str| {
        order
            .iter()
            .position(|p| p.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not in {order:#?}"))
    };
    assert!(pos("/netfs.ko") < pos("/cifs.ko"));
    assert!(pos("/fscache.ko") < pos("/cifs.ko"));
    assert!(pos("/virtio.ko") < pos("/virtio_pci.ko"));
    assert!(pos("/libata.ko") < pos("/ata_piix.ko"));
    assert!(pos("/cdrom.ko") < pos("/sr_mod.ko"));
    assert!(pos("/jbd2.ko") < pos("/ext4.ko"));
    let mut unique = order.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), order.len(), "a module listed twice");

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("m.cpio");
    b.write_cpio(std::fs::File::create(&archive).unwrap())
        .unwrap();
    run_ok(
        Command::new("cpio")
            .current_dir(dir.path())
            .args(["-idm", "--quiet", "-F"])
            .arg(&archive)
            .arg("etc/modules.order"),
    );
    let recorded = std::fs::read_to_string(dir.path().join("etc/modules.order")).unwrap();
    assert_eq!(recorded.lines().collect::<Vec<_>>(), order);
}

/// A dynamically linked host program comes with its loader and libraries
/// at the paths the loader searches.
#[test]
fn host_binary_brings_its_libraries() {
    let parts = parts();
    let mut b = InitrdBuilder::new();
    b.add_host_binary(&parts.dropbear, "/usr/sbin/dropbear")
        .unwrap();
    let paths: Vec<&str> = b.paths().collect();
    assert!(paths.contains(&"usr/sbin/dropbear"));
    assert!(
        paths.contains(&"usr/lib64/ld-linux-x86-64.so.2"),
        "{paths:#?}"
    );
    assert!(
        paths.contains(&"usr/lib/x86_64-linux-gnu/libc.so.6"),
        "{paths:#?}"
    );
    assert!(paths.contains(&"lib64"), "/lib64 resolves to usr/lib64");
}

/// The cache: a second build of the same inputs is a hit (its times are
/// printed, not asserted: speed belongs in benchmarks); changing one input
/// file gives a new hash and a new image.
#[test]
fn controller_initrd_is_cached_by_content() {
    let parts = parts();
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent");
    std::fs::write(&agent, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();

    let t = Instant::now();
    let first = controller::controller_initrd(&parts, Some(&agent))
        .unwrap()
        .build_cached(cache.path())
        .unwrap();
    let cold = t.elapsed();
    assert!(!first.cache_hit);
    let size = std::fs::metadata(&first.path).unwrap().len();

    let t = Instant::now();
    let second = controller::controller_initrd(&parts, Some(&agent))
        .unwrap()
        .build_cached(cache.path())
        .unwrap();
    let warm = t.elapsed();
    assert!(second.cache_hit);
    assert_eq!(first.path, second.path);
    println!(
        "controller initrd {} MiB: cold build {cold:?}, cache hit {warm:?}",
        size >> 20
    );

    std::fs::write(&agent, "#!/bin/sh\nexit 1\n").unwrap();
    let third = controller::controller_initrd(&parts, Some(&agent))
        .unwrap()
        .build_cached(cache.path())
        .unwrap();
    assert!(!third.cache_hit);
    assert_ne!(third.hash, first.hash);
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".img") && !n.starts_with('.'))
    );
}

/// The vmlinux extracted from the installed bzImage is an ELF, cached once.
#[test]
fn vmlinux_is_extracted_from_the_bzimage() {
    let parts = parts();
    let cache = tempfile::tempdir().unwrap();
    let first = controller::kernel::pvh_kernel(&parts.kernel, cache.path()).unwrap();
    let data = std::fs::read(&first).unwrap();
    assert_eq!(&data[..4], b"\x7fELF");
    assert!(data.len() > std::fs::metadata(&parts.kernel.image).unwrap().len() as usize);
    let again = controller::kernel::pvh_kernel(&parts.kernel, cache.path()).unwrap();
    assert_eq!(first, again);
}

// --------------------------------------------------------------- VM helpers

/// A child in its own process group, stopped SIGTERM → wait → SIGKILL on drop.
struct Proc {
    child: Child,
    name: &'static str,
    // vde_switch reads commands on stdin and exits at EOF: keep it open.
    _stdin: Option<std::process::ChildStdin>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let log = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdin = child.stdin.take();
        Proc {
            child,
            name,
            _stdin: stdin,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        for _ in 0..30 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{} did not stop on SIGTERM; killing", self.name);
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn vde_switch(dir: &Path) -> (Proc, PathBuf) {
    let sock = dir.join("switch");
    let p = Proc::spawn(
        "vde_switch",
        Command::new("vde_switch").arg("--sock").arg(&sock),
        &dir.join("vde_switch.log"),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.join("ctl").exists() {
        assert!(Instant::now() < end, "vde_switch made no socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, sock)
}

/// The uncompressed vmlinux (PVH boot), cached next to the initrds.
fn boot_kernel(parts: &HostParts) -> PathBuf {
    controller::kernel::pvh_kernel(&parts.kernel, &controller::initrd::default_cache_dir())
        .expect("a PVH-capable kernel")
}

fn qemu_base(kernel: &Path, initrd: &Path, append: &str, serial_log: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-nodefaults", "-display", "none"])
        .args(["-machine", "pc", "-m", "384", "-smp", "1", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        .arg("-serial")
        .arg(format!("file:{}", serial_log.display()));
    cmd
}

fn add_9p(cmd: &mut Command, tag: &str, path: &Path, readonly: bool) {
    let ro = if readonly { ",readonly=on" } else { "" };
    cmd.arg("-fsdev")
        .arg(format!(
            "local,id={tag},path={},security_model=none{ro}",
            path.display()
        ))
        .arg("-device")
        .arg(format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}"));
}

fn add_nic(cmd: &mut Command, switch: &Path, mac: &str) {
    cmd.arg("-netdev")
        .arg(format!("vde,id=net0,sock={}", switch.display()))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=net0,mac={mac}"));
}

/// A running controller VM and its host-side directories.
struct Controller {
    _qemu: Proc,
    serial_log: PathBuf,
    agent_sock: PathBuf,
}

fn start_controller(dir: &Path, switch: &Path, parts: &HostParts) -> Controller {
    let initrd = controller::controller_initrd(parts, None)
        .unwrap()
        .build_cached(&dir.join("cache"))
        .unwrap();
    let (inputs, outputs) = (dir.join("inputs"), dir.join("outputs"));
    for d in [&inputs, &outputs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let serial_log = dir.join("controller.serial.log");
    let agent_sock = dir.join("controller.agent.sock");
    let mut cmd = qemu_base(
        &boot_kernel(parts),
        &initrd.path,
        &format!(
            "console=ttyS0 quiet cygvm.addr=192.168.0.2/24 cygvm.guest=192.168.0.1 \
             cygvm.user=cygvm cygvm.debug={}",
            u8::from(std::env::var_os("CYGVM_TEST_DEBUG").is_some())
        ),
        &serial_log,
    );
    cmd.args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            agent_sock.display()
        ))
        .args(["-device", "virtserialport,chardev=agent,name=cygvm.agent"]);
    add_9p(&mut cmd, "inputs", &inputs, true);
    add_9p(&mut cmd, "outputs", &outputs, false);
    add_nic(&mut cmd, switch, "52:54:00:12:01:02");
    let qemu = Proc::spawn(
        "controller qemu",
        &mut cmd,
        &dir.join("controller.qemu.log"),
    );
    Controller {
        _qemu: qemu,
        serial_log,
        agent_sock,
    }
}

/// The first line of a serial log starting with `prefix`, trimmed (the
/// console ends lines with \r\n).
fn line_starting(log: &str, prefix: &str) -> String {
    log.lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{log}"))
        .to_string()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Reads lines from the controller's virtio-serial port until the ready
/// line, a failure line, or the deadline.
fn wait_ready(c: &Controller, deadline: Duration) -> Duration {
    let start = Instant::now();
    let end = start + deadline;
    let stream = loop {
        match UnixStream::connect(&c.agent_sock) {
            Ok(s) => break s,
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("agent socket: {e}\n{}", tail(&c.serial_log)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        assert!(
            Instant::now() < end,
            "controller not ready after {deadline:?}; serial log:\n{}",
            tail(&c.serial_log)
        );
        match reader.read_line(&mut line) {
            Ok(0) => std::thread::sleep(Duration::from_millis(50)),
            Ok(_) if line.ends_with('\n') => {
                let l = line.trim().to_string();
                line.clear();
                if l == READY_LINE {
                    return start.elapsed();
                }
                assert!(
                    !l.starts_with(controller::FAILED_PREFIX),
                    "{l}\n{}",
                    tail(&c.serial_log)
                );
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("agent socket: {e}"),
        }
    }
}

// ------------------------------------------------------------------ VM tests

/// The controller boots, starts smbd and says ready on
/// the virtio-serial port within the deadline; the time is printed.
#[test]
#[ignore = "boots QEMU under TCG; run by .ci/run with --include-ignored"]
fn controller_boots_and_reports_ready() {
    let _ = VM_TEST;
    let parts = parts();
    let dir = tempfile::tempdir().unwrap();
    let (_switch, sock) = vde_switch(dir.path());
    let c = start_controller(dir.path(), &sock, &parts);
    let took = wait_ready(&c, Duration::from_secs(60));
    println!(
        "controller ready {:.1} s after QEMU started",
        took.as_secs_f64()
    );
    let serial = std::fs::read_to_string(&c.serial_log).unwrap();
    assert!(serial.contains(READY_LINE), "{serial}");
    println!("{}", line_starting(&serial, "cygvm-controller: init took"));
    if std::env::var_os("CYGVM_TEST_DEBUG").is_some() {
        // init copies smbd's log to the console just after the ready line.
        std::thread::sleep(Duration::from_secs(2));
        println!("{}", std::fs::read_to_string(&c.serial_log).unwrap());
    }
}
