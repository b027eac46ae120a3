//! A throwaway directory with a linux-standin `cygvm.toml`, its image, and
//! its own XDG_RUNTIME_DIR, so a test can see the run directories (and the
//! processes recorded in them) that its `cygvm` commands leave behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

pub struct Workspace {
    dir: tempfile::TempDir,
    pub runtime: PathBuf,
    name: String,
    /// The cache cygvm uses (XDG_CACHE_HOME): the user's unless
    /// [`Workspace::with_own_cache`].
    cache: Option<PathBuf>,
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// VMs under TCG share two cores; tests that boot them take turns (a test
/// that runs two at once does so on purpose).
pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn remove_at_exit(path: PathBuf) {
    static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_all() {
        let paths = std::mem::take(&mut *PATHS.lock().unwrap_or_else(|e| e.into_inner()));
        for p in paths {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    // SAFETY: registers a plain function to run at exit.
    REGISTER.call_once(|| unsafe {
        libc::atexit(remove_all);
    });
    PATHS.lock().unwrap_or_else(|e| e.into_inner()).push(path);
}

impl Workspace {
    /// `extra_guest` is appended to the `[guest]` table (and may open new tables).
    pub fn new(name: &str, extra_guest: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standin/mirror");
        let config = format!(
            "[image]\nname = \"{name}\"\ndir = \"images\"\n\n[guest]\nos = \"linux-standin\"\n\
             memory = \"384M\"\ncpus = 1\ndisk = \"1G\"\n{extra_guest}\n\n[cygwin]\nmirror = \"{}\"\n\
             packages = [\"openssh\"]\n\n[provision]\ncommands = [\"echo provisioned > ~/provisioned\"]\n",
            mirror.display()
        );
        std::fs::write(dir.path().join("cygvm.toml"), config).unwrap();
        let runtime = dir.path().join("runtime");
        std::fs::create_dir(&runtime).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self {
            dir,
            runtime,
            name: name.to_string(),
            cache: None,
        }
    }

    /// Gives cygvm a cache of this workspace's own (`cache/` in it), so a
    /// test sees exactly the snapshots its runs make.
    pub fn with_own_cache(mut self) -> Self {
        let cache = self.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        self.cache = Some(cache);
        self
    }

    /// For a workspace kept in a static (shared by a binary's tests):
    /// statics are never dropped, so its directory is removed when the
    /// test binary exits instead.
    pub fn removed_at_exit(self) -> Self {
        remove_at_exit(self.path().to_path_buf());
        self
    }

    /// `$XDG_CACHE_HOME/cygvm` of this workspace's commands.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache
            .clone()
            .expect("a workspace made with_own_cache")
            .join("cygvm")
    }

    /// A workspace whose image is installed (the install must succeed).
    pub fn installed(name: &str) -> Self {
        let ws = Self::new(name, "");
        let out = ws.install();
        assert!(
            out.status.success(),
            "install failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn image(&self) -> PathBuf {
        self.path().join("images").join(&self.name)
    }

    pub fn generation(&self, n: u32) -> PathBuf {
        self.image().join(format!("gen-{n:04}"))
    }

    pub fn cygvm(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cygvm"));
        cmd.env("XDG_RUNTIME_DIR", &self.runtime)
            .env_remove("RUST_LOG")
            .current_dir(self.path());
        if let Some(cache) = &self.cache {
            cmd.env("XDG_CACHE_HOME", cache);
        }
        cmd
    }

    pub fn install(&self) -> Output {
        self.cygvm()
            .args(["install", "--config", "cygvm.toml"])
            .output()
            .unwrap()
    }

    /// `cygvm run [extra] --image IMAGE -- command`.
    pub fn run(&self, extra: &[&str], command: &[&str]) -> Output {
        self.cygvm()
            .arg("run")
            .args(extra)
            .arg("--image")
            .arg(self.image())
            .arg("--")
            .args(command)
            .output()
            .unwrap()
    }

    pub fn refresh(&self, command: &[&str]) -> Output {
        let mut cmd = self.cygvm();
        cmd.args(["refresh", "--image"]).arg(self.image());
        if !command.is_empty() {
            cmd.arg("--").args(command);
        }
        cmd.output().unwrap()
    }

    /// Run directories still present under this workspace's runtime dir.
    pub fn run_dirs(&self) -> Vec<String> {
        match std::fs::read_dir(self.runtime.join("cygvm")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// QEMU and vde_switch processes whose command line mentions this workspace.
    pub fn processes(&self) -> Vec<String> {
        let needle = self.path().to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle)
                && (cmdline.contains("qemu-system") || cmdline.contains("vde_switch"))
            {
                found.push(format!("{name}: {cmdline}"));
            }
        }
        found
    }
}
