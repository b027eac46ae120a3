//! `cygvm push` and `cygvm pull` against a real registry (Debian's
//! docker-registry, distribution v2.8) with an image generation made of
//! real files (a state.gz from cygvm's writer, a manifest, secrets), driven
//! through the binary as a user would. The runs of a pulled stand-in image
//! are in registry_e2e.rs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[path = "common/registry.rs"]
mod registry;
#[path = "common/synthetic.rs"]
mod synthetic;

use cygvm::image::ImageDir;
use cygvm::snapshot::manifest::{DiskEntry, FORMAT_VERSION, rfc3339_utc};
use cygvm::snapshot::{CodecOptions, Manifest, MigrationWriter};
use registry::TestRegistry;

const MIB: usize = 1 << 20;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Skips (saying why) when the registry is not installed.
macro_rules! require_registry {
    () => {
        if let Some(why) = registry::missing() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// A host: its own home, cache (the default store) and credentials.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> PathBuf {
        self.path().join("cache/cygvm/oci")
    }

    fn cygvm(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cygvm"));
        cmd.env("HOME", self.path())
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .env("XDG_RUNTIME_DIR", self.path())
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .env_remove("RUST_LOG")
            .current_dir(self.path());
        cmd
    }

    fn push(&self, image: &Path, target: &str, extra: &[&str]) -> Output {
        self.cygvm()
            .args(["push", "--plain-http", "--slice-size", "1", "--image"])
            .arg(image)
            .args(extra)
            .arg(target)
            .output()
            .unwrap()
    }

    fn pull(&self, reference: &str) -> Output {
        self.cygvm()
            .args(["pull", "--plain-http", reference])
            .output()
            .unwrap()
    }

    /// A push (in 1 MiB slices) with the credentials in `auth_file`.
    fn push_with(&self, auth_file: &Path, image: &Path, target: &str) -> Output {
        self.cygvm()
            .env("REGISTRY_AUTH_FILE", auth_file)
            .args(["push", "--plain-http", "--slice-size", "1", "--image"])
            .arg(image)
            .arg(target)
            .output()
            .unwrap()
    }

    /// A pull with the credentials in `auth_file`.
    fn pull_with(&self, auth_file: &Path, reference: &str) -> Output {
        self.cygvm()
            .env("REGISTRY_AUTH_FILE", auth_file)
            .args(["pull", "--plain-http", reference])
            .output()
            .unwrap()
    }
}

/// A command that failed for want of credentials for `reg`.
fn assert_needs_credentials(out: &Output, reg: &TestRegistry) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "registry {} wants credentials and none are stored for it",
            reg.addr
        )),
        "{stderr}"
    );
}

/// A command refused for the credentials of user "builder" in `auth_file`:
/// the error names both and shows none of `secrets`.
fn assert_refused(out: &Output, reg: &TestRegistry, auth_file: &Path, secrets: &[&str]) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "registry {} refused the credentials of user \"builder\" from {}",
            reg.addr,
            auth_file.display()
        )),
        "{stderr}"
    );
    for secret in secrets {
        assert!(!stderr.contains(secret), "{stderr}");
    }
}

/// An image directory with one generation: a `disk_mib` MiB disk, a
/// state.gz of 1 MiB members, its manifest, a config and the secrets.
fn make_image(root: &Path, disk_mib: usize, seed: u64) -> PathBuf {
    let image = ImageDir::new(root.join("images/synthetic"));
    let lock = image.lock_exclusive().unwrap();
    let generation = image.begin_generation(&lock).unwrap();
    std::fs::write(generation.disk(), synthetic::stream(disk_mib * MIB, seed)).unwrap();
    let writer = MigrationWriter::create(
        &generation.state(),
        CodecOptions {
            member_size: MIB,
            ..CodecOptions::default()
        },
    )
    .unwrap();
    let state = writer
        .save(&synthetic::stream(5 * MIB + 7, seed + 1)[..])
        .unwrap()
        .commit()
        .unwrap();
    // The package index it was made from, as install keeps it.
    let index =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standin/mirror/x86_64/setup.ini");
    std::fs::create_dir_all(generation.dir.join("cygwin-index")).unwrap();
    std::fs::copy(index, generation.dir.join("cygwin-index/setup.ini")).unwrap();
    std::fs::write(
        generation.dir.join("config.toml"),
        "[image]\nname = \"synthetic\"\n\n[guest]\nos = \"linux-standin\"\n",
    )
    .unwrap();
    let disk_sha = cygvm::fsutil::sha256_file(&generation.disk()).unwrap();
    Manifest {
        format_version: FORMAT_VERSION,
        cygvm_version: env!("CARGO_PKG_VERSION").into(),
        qemu_version: "10.0.2".into(),
        machine: "pc-q35-10.0".into(),
        device_argv: vec!["-m".into(), "384".into()],
        memory_bytes: 384 << 20,
        disk: DiskEntry {
            size: (disk_mib * MIB) as u64,
            virtual_size: 1 << 30,
            sha256: disk_sha,
        },
        state: Some(state),
        config_fingerprint: "cd".repeat(32),
        cygwin_packages: vec!["openssh".into()],
        created: rfc3339_utc(std::time::SystemTime::now()),
    }
    .save(&generation.manifest())
    .unwrap();
    cygvm::secrets::ImageSecrets::load_or_create(&image.secrets(), None).unwrap();
    generation.publish().unwrap();
    image.root
}

/// The pinned reference `cygvm push` prints.
fn pushed_ref(out: &Output) -> String {
    assert!(out.status.success(), "push failed:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout.trim();
    assert!(line.contains("@sha256:"), "{stdout}");
    line.to_string()
}

fn same_file(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} differs from {}",
        a.display(),
        b.display()
    );
}

#[test]
fn push_then_pull_on_another_host_gives_the_generation_byte_for_byte() {
    require_registry!();
    let reg = TestRegistry::start();
    let here = Host::new();
    let image = make_image(here.path(), 3, 1);
    let target = format!("{}/team/synthetic", reg.addr);
    let out = here.push(&image, &target, &[]);
    let pinned = pushed_ref(&out);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("tags gen-0001, latest"), "{stderr}");
    assert!(
        stderr.contains("0 B (0 layers) were already in the registry"),
        "{stderr}"
    );

    // The artifact as the registry serves it.
    let digest = pinned.split_once('@').unwrap().1;
    let manifest_file = reg.blob_file(digest);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_file).unwrap()).unwrap();
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.cygvm.generation.v1"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.cygvm.generation.manifest.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    let disk_slices: Vec<_> = layers
        .iter()
        .filter(|l| l["annotations"]["cygvm.file"] == "gen-0001/disk.qcow2")
        .collect();
    assert_eq!(disk_slices.len(), 3, "a 3 MiB disk in 1 MiB slices");
    let state_layers: Vec<_> = layers
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.cygvm.state.v1+gzip")
        .collect();
    assert!(state_layers.len() >= 3, "{state_layers:?}");
    // Every state layer is gzip on its own.
    for l in &state_layers {
        let blob = reg.blob_file(l["digest"].as_str().unwrap());
        let status = Command::new("gzip")
            .arg("-t")
            .stdin(std::fs::File::open(blob).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "state layer {l} is not valid gzip");
    }

    // Another host pulls it by digest.
    let there = Host::new();
    let out = there.pull(&pinned);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = PathBuf::from(text(&out.stdout).trim());
    assert_eq!(
        dir,
        there
            .store()
            .join("sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    );
    let pulled = dir.join("current");
    let source = image.join("gen-0001");
    for f in [
        "disk.qcow2",
        "state.gz",
        "manifest.json",
        "config.toml",
        "cygwin-index/setup.ini",
    ] {
        same_file(&pulled.join(f), &source.join(f));
    }
    for f in ["client_ed25519", "ssh_host_ed25519_key", "samba_password"] {
        same_file(&dir.join("secrets").join(f), &image.join("secrets").join(f));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pulled.join("disk.qcow2")), 0o444);
    assert_eq!(mode(&pulled.join("state.gz")), 0o400);
    assert_eq!(mode(&dir.join("secrets/client_ed25519")), 0o600);
    // The pulled generation passes the checks a run makes.
    let m = Manifest::load(&pulled.join("manifest.json")).unwrap();
    cygvm::snapshot::verify(&pulled.join("state.gz"), m.state.as_ref().unwrap()).unwrap();

    // Again: nothing to fetch. By tag: the same artifact.
    let again = there.pull(&pinned);
    assert!(
        text(&again.stderr).contains("is in the store already"),
        "{}",
        text(&again.stderr)
    );
    let by_tag = there.pull(&format!("{target}:gen-0001"));
    assert_eq!(text(&by_tag.stdout), text(&out.stdout));

    // Pushing the same generation again sends no blob.
    let out = here.push(&image, &target, &[]);
    assert_eq!(pushed_ref(&out), pinned);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("layers) were already in the registry"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(" pushed "),
        "a blob went up again:\n{stderr}"
    );
}

#[test]
fn a_tampered_blob_is_refused_by_digest_and_nothing_is_kept() {
    require_registry!();
    let reg = TestRegistry::start();
    let here = Host::new();
    let image = make_image(here.path(), 2, 2);
    let pinned = pushed_ref(&here.push(&image, &format!("{}/synthetic", reg.addr), &[]));
    let digest = pinned.split_once('@').unwrap().1;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reg.blob_file(digest)).unwrap()).unwrap();
    for media_type in [
        "application/vnd.cygvm.state.v1+gzip",
        "application/vnd.cygvm.file.slice.v1+zstd",
    ] {
        let layer = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|l| l["mediaType"] == media_type)
            .unwrap();
        let blob_digest = layer["digest"].as_str().unwrap();
        let blob = reg.blob_file(blob_digest);
        let mut bytes = std::fs::read(&blob).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&blob, &bytes).unwrap();

        let there = Host::new();
        let out = there.pull(&pinned);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "a tampered {media_type} blob was accepted"
        );
        assert!(
            stderr.contains(&format!(
                "blob {blob_digest} from {}/synthetic does not match its digest",
                reg.addr
            )),
            "{stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(there.store().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "left in the store: {left:?}");
        bytes[at] ^= 0x40;
        std::fs::write(&blob, &bytes).unwrap();
    }
}

#[test]
fn a_killed_pull_resumes_with_the_layers_it_lacks() {
    require_registry!();
    let reg = TestRegistry::start();
    let here = Host::new();
    let image = make_image(here.path(), 48, 3);
    let pinned = pushed_ref(&here.push(&image, &format!("{}/synthetic", reg.addr), &[]));
    let there = Host::new();
    // One layer at a time, killed after its fifth.
    let mut child = there
        .cygvm()
        .args(["pull", "--plain-http", "--jobs", "1", &pinned])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let line = lines.next().expect("pull output ended early").unwrap();
        if line.contains(" pulled ") {
            seen.push(line);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let hex = pinned.rsplit_once(':').unwrap().1;
    assert!(
        !there.store().join("sha256").join(hex).exists(),
        "the pull finished before it was killed"
    );
    assert!(
        there
            .store()
            .join("sha256")
            .join(format!(".{hex}.partial"))
            .is_dir()
    );

    let out = there.pull(&pinned);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let resumed: usize = stderr
        .split("resumed: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume reported:\n{stderr}"));
    assert!(resumed >= 5, "{stderr}");
    for line in &seen {
        let layer = line.split(" pulled ").next().unwrap();
        assert!(
            !stderr.contains(&format!("{layer} pulled")),
            "{layer} fetched twice:\n{stderr}"
        );
    }
    let dir = there.store().join("sha256").join(hex).join("current");
    same_file(&dir.join("disk.qcow2"), &image.join("gen-0001/disk.qcow2"));
    same_file(&dir.join("state.gz"), &image.join("gen-0001/state.gz"));
    assert!(
        !there
            .store()
            .join("sha256")
            .join(format!(".{hex}.partial"))
            .exists()
    );
}

#[test]
fn two_pulls_of_one_artifact_on_a_host_fetch_it_once() {
    require_registry!();
    let reg = TestRegistry::start();
    let here = Host::new();
    let image = make_image(here.path(), 16, 4);
    let pinned = pushed_ref(&here.push(&image, &format!("{}/synthetic", reg.addr), &[]));
    let there = Host::new();
    let children: Vec<_> = (0..2)
        .map(|_| {
            there
                .cygvm()
                .args(["pull", "--plain-http", &pinned])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    assert_eq!(text(&outs[0].stdout), text(&outs[1].stdout));
    let fetched = outs
        .iter()
        .filter(|o| text(&o.stderr).contains(&format!("pulled {pinned}")))
        .count();
    assert_eq!(
        fetched,
        1,
        "{}\n---\n{}",
        text(&outs[0].stderr),
        text(&outs[1].stderr)
    );
}

#[test]
fn credentials_come_from_the_auth_file_and_a_wrong_password_is_named() {
    require_registry!();
    if let Err(e) = Command::new("htpasswd").arg("-h").output() {
        eprintln!("skipped: htpasswd (apache2-utils) cannot run: {e}");
        return;
    }
    let reg = TestRegistry::with_user("builder", "right-horse-battery");
    let here = Host::new();
    let image = make_image(here.path(), 1, 5);
    let target = format!("{}/synthetic", reg.addr);

    let out = here.push(&image, &target, &[]);
    assert_needs_credentials(&out, &reg);

    let good = reg.auth_file(here.path(), "builder", "right-horse-battery");
    let pinned = pushed_ref(&here.push_with(&good, &image, &target));

    let bad = reg.auth_file(here.path(), "builder", "wrong-password");
    let out = here.pull_with(&bad, &pinned);
    assert_refused(&out, &reg, &bad, &["wrong-password", "right-horse"]);

    // docker's file, found through HOME.
    std::fs::create_dir_all(here.path().join(".docker")).unwrap();
    std::fs::copy(&good, here.path().join(".docker/config.json")).unwrap();
    let out = here.pull(&pinned);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_registry_with_token_auth_gets_bearer_tokens_for_the_stored_credentials() {
    require_registry!();
    if let Err(e) = Command::new("openssl").arg("version").output() {
        eprintln!("skipped: openssl (signs the test token service's tokens) cannot run: {e}");
        return;
    }
    let reg = TestRegistry::with_token_service("builder", "token-horse-staple");
    let tokens = reg.tokens.as_ref().unwrap();
    let here = Host::new();
    let image = make_image(here.path(), 2, 9);
    let target = format!("{}/team/synthetic", reg.addr);

    // The token service wants credentials; there are none.
    let out = here.push(&image, &target, &[]);
    assert_needs_credentials(&out, &reg);

    // With them (kept for the registry, sent to its token service), the
    // push gets a token that may push.
    let good = reg.auth_file(here.path(), "builder", "token-horse-staple");
    let pinned = pushed_ref(&here.push_with(&good, &image, &target));
    assert!(
        tokens
            .granted()
            .iter()
            .any(|s| s == "repository:team/synthetic:pull,push"),
        "{:?}",
        tokens.granted()
    );

    // Another host pulls it with a token of its own.
    let there = Host::new();
    let theirs = reg.auth_file(there.path(), "builder", "token-horse-staple");
    let out = there.pull_with(&theirs, &pinned);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pulled = PathBuf::from(text(&out.stdout).trim()).join("current");
    for f in ["disk.qcow2", "state.gz", "manifest.json"] {
        same_file(&pulled.join(f), &image.join("gen-0001").join(f));
    }

    // A wrong password: the token service refuses it, and cygvm says whose.
    let elsewhere = Host::new();
    let bad = reg.auth_file(elsewhere.path(), "builder", "wrong");
    let out = elsewhere.pull_with(&bad, &pinned);
    assert_refused(&out, &reg, &bad, &["token-horse", "Bearer"]);
    let left: Vec<_> = std::fs::read_dir(elsewhere.store().join("sha256"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the store: {left:?}");
}

#[test]
fn store_prune_removes_what_was_not_used_and_never_what_a_run_holds() {
    require_registry!();
    let reg = TestRegistry::start();
    let here = Host::new();
    let there = Host::new();
    let mut pinned = Vec::new();
    for (n, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let root = here.path().join(name);
        let image = make_image(&root, 1, 20 + n as u64);
        let out = here.push(&image, &format!("{}/{name}", reg.addr), &[]);
        let r = pushed_ref(&out);
        let out = there.pull(&r);
        assert!(out.status.success(), "{}", text(&out.stderr));
        pinned.push(r);
    }
    let store = |args: &[&str]| there.cygvm().arg("store").args(args).output().unwrap();
    let listed = text(&store(&["list"]).stdout);
    for r in &pinned {
        assert!(listed.contains(r.as_str()), "{listed}");
    }
    let hex = |r: &str| r.rsplit_once("@sha256:").unwrap().1.to_string();
    let dir = |r: &str| there.store().join("sha256").join(hex(r));

    let refused = store(&["prune"]);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("--unused-for DAYS"));
    let out = store(&["prune", "--unused-for", "14"]);
    assert_eq!(text(&out.stdout), "nothing to remove\n");

    // alpha and beta unused for a month; a run holds beta.
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86400);
    for r in &pinned[..2] {
        std::fs::File::options()
            .append(true)
            .open(
                there
                    .store()
                    .join("sha256")
                    .join(format!("{}.lock", hex(r))),
            )
            .unwrap()
            .set_modified(month_ago)
            .unwrap();
    }
    let held = ImageDir::new(dir(&pinned[1]))
        .current()
        .unwrap()
        .lock_shared()
        .unwrap();
    let out = store(&["prune", "--unused-for", "14"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let removed = text(&out.stdout);
    assert!(
        removed.starts_with(&format!("removed {} (", pinned[0])) && removed.lines().count() == 1,
        "{removed}"
    );
    assert!(
        text(&out.stderr).contains(&format!("{} (", pinned[1]))
            && text(&out.stderr).contains("is in use; kept"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir(&pinned[0]).exists() && dir(&pinned[1]).exists() && dir(&pinned[2]).exists());
    drop(held);

    // Pulling gamma again is a use; --max-size keeps the most recently used.
    let out = there.pull(&pinned[2]);
    assert!(out.status.success());
    let out = store(&["prune", "--max-size", "5M"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("removed {}", pinned[1])));
    assert!(!dir(&pinned[1]).exists() && dir(&pinned[2]).exists());
    let listed = text(&store(&["list"]).stdout);
    assert!(
        listed.contains(&pinned[2]) && !listed.contains(&pinned[1]),
        "{listed}"
    );
    // What was removed can be pulled again.
    let out = there.pull(&pinned[0]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir(&pinned[0]).join("current/disk.qcow2").exists());
}

/// A `pass` password store with a GnuPG key of its own, under `dir`, for
/// `docker-credential-pass`; its gpg-agent is stopped when dropped.
struct PassStore {
    gnupg: PathBuf,
    store: PathBuf,
}

impl PassStore {
    fn new(dir: &Path) -> Self {
        let gnupg = dir.join("gnupg");
        let store = dir.join("password-store");
        std::fs::create_dir(&gnupg).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        let this = Self { gnupg, store };
        let made = this
            .command("gpg")
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .args([
                "cygvm test <cygvm-test@localhost>",
                "default",
                "default",
                "never",
            ])
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", text(&made.stderr));
        let keys = this
            .command("gpg")
            .args(["--list-keys", "--with-colons"])
            .output()
            .unwrap();
        let listed = text(&keys.stdout);
        let fingerprint = listed
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.trim_matches(':').rsplit(':').next())
            .expect("the new key's fingerprint")
            .to_string();
        let init = this
            .command("pass")
            .args(["init", &fingerprint])
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", text(&init.stderr));
        this
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("GNUPGHOME", &self.gnupg)
            .env("PASSWORD_STORE_DIR", &self.store);
        cmd
    }

    /// `docker-credential-pass store`, as `docker login` does with
    /// `"credsStore": "pass"`.
    fn keep(&self, registry: &str, user: &str, secret: &str) {
        use std::io::Write;
        let mut child = self
            .command("docker-credential-pass")
            .arg("store")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        write!(
            child.stdin.take().unwrap(),
            r#"{{"ServerURL": "{registry}", "Username": "{user}", "Secret": "{secret}"}}"#
        )
        .unwrap();
        assert!(child.wait().unwrap().success());
    }
}

impl Drop for PassStore {
    fn drop(&mut self) {
        let _ = self.command("gpgconf").args(["--kill", "all"]).status();
    }
}

#[test]
fn credentials_come_from_a_docker_credential_helper() {
    require_registry!();
    for tool in ["docker-credential-pass", "pass", "gpg", "htpasswd"] {
        if let Err(e) = Command::new(tool).arg("--version").output() {
            eprintln!(
                "skipped: {tool} cannot run ({e}); scripts/install-deps installs golang-docker-credential-helpers, pass, gnupg and apache2-utils"
            );
            return;
        }
    }
    let reg = TestRegistry::with_user("builder", "kept-by-pass");
    let here = Host::new();
    let pass = PassStore::new(here.path());
    let image = make_image(here.path(), 1, 40);
    let target = format!("{}/helped", reg.addr);
    let docker = here.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    let config = docker.join("config.json");
    let with_pass = |cmd: &mut Command| {
        cmd.env("GNUPGHOME", &pass.gnupg)
            .env("PASSWORD_STORE_DIR", &pass.store);
    };

    // docker login with "credsStore": "pass" leaves an empty auths entry
    // and the password in the store.
    pass.keep(&reg.addr, "builder", "kept-by-pass");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{}}}}, "credsStore": "pass"}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let mut push = here.cygvm();
    with_pass(&mut push);
    let out = push
        .args(["push", "--plain-http", "--image"])
        .arg(&image)
        .arg(&target)
        .output()
        .unwrap();
    let pinned = pushed_ref(&out);

    // A helper for this registry only (credHelpers), on another host.
    let there = Host::new();
    std::fs::create_dir_all(there.path().join(".docker")).unwrap();
    std::fs::write(
        there.path().join(".docker/config.json"),
        format!(r#"{{"credHelpers": {{"{}": "pass"}}}}"#, reg.addr),
    )
    .unwrap();
    let mut pull = there.cygvm();
    with_pass(&mut pull);
    let out = pull
        .args(["pull", "--plain-http", &pinned])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A wrong password in the helper's store: named with the helper.
    pass.keep(&reg.addr, "builder", "not-the-password");
    let elsewhere = Host::new();
    let mut pull = elsewhere.cygvm();
    with_pass(&mut pull);
    let out = pull
        .env("REGISTRY_AUTH_FILE", &config)
        .args(["pull", "--plain-http", &pinned])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "registry {} refused the credentials of user \"builder\" from docker-credential-pass (named in {})",
            reg.addr,
            config.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");

    // A helper that is not installed.
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{}}}}, "credsStore": "cygvm-missing"}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let out = here.pull_with(&config, &pinned);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{} names the credential helper docker-credential-cygvm-missing, which cannot run",
            config.display()
        )),
        "{stderr}"
    );
}

#[test]
fn an_unknown_tag_and_a_plain_http_registry_without_the_flag_are_clear_errors() {
    require_registry!();
    let reg = TestRegistry::start();
    let here = Host::new();
    let out = here.pull(&format!("{}/synthetic:no-such-tag", reg.addr));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{}/synthetic:no-such-tag: no such tag or digest in the registry",
            reg.addr
        )),
        "{stderr}"
    );
    let out = here
        .cygvm()
        .args(["pull", &format!("{}/synthetic:latest", reg.addr)])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pass --plain-http"), "{stderr}");
}

/// The JSON event lines of a `--json=FILE` file.
fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn push_and_pull_report_json_events() {
    require_registry!();
    let reg = TestRegistry::start();
    let here = Host::new();
    let image = make_image(here.path(), 2, 7);
    let target = format!("{}/team/events", reg.addr);
    let push_events = here.path().join("push.jsonl");
    let out = here.push(
        &image,
        &target,
        &[&format!("--json={}", push_events.display())],
    );
    let pinned = pushed_ref(&out);
    let ev = events(&push_events);
    let kinds: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "started",
            "phase_started",
            "pushed",
            "phase_finished",
            "finished"
        ],
        "{ev:?}"
    );
    assert!(ev.iter().all(|e| e["command"] == "push"));
    assert_eq!(ev[2]["reference"], pinned.as_str());
    assert_eq!(ev[4]["exit_status"], 0);

    let there = Host::new();
    let pull_events = there.path().join("pull.jsonl");
    let out = there
        .cygvm()
        .args(["pull", "--plain-http"])
        .arg(format!("--json={}", pull_events.display()))
        .arg(&pinned)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ev = events(&pull_events);
    let pulled = ev
        .iter()
        .find(|e| e["event"] == "pulled")
        .expect("a pulled event");
    assert_eq!(pulled["reference"], pinned.as_str());
    assert_eq!(pulled["fetched"], true);
    assert_eq!(ev.last().unwrap()["event"], "finished");
    assert_eq!(ev.last().unwrap()["exit_status"], 0);

    // A pull that fails ends with the error in its last event.
    let bad_events = there.path().join("bad.jsonl");
    let out = there
        .cygvm()
        .args(["pull", "--plain-http"])
        .arg(format!("--json={}", bad_events.display()))
        .arg(format!("{}/team/events:no-such-tag", reg.addr))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let last = events(&bad_events).pop().unwrap();
    assert_eq!(last["event"], "finished");
    assert_eq!(last["exit_status"], 1);
    assert!(
        last["error"].as_str().unwrap().contains("no-such-tag"),
        "{last}"
    );
}
