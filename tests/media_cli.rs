//! `cygvm media` end to end through the binary, read back with independent
//! tools: mtools for the floppy, xorriso and isoinfo (Joliet, as Windows
//! reads it) for the ISO.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "common/fixtures.rs"]
mod fixtures;
use fixtures::fixture;

use sha2::{Digest, Sha256};

fn example_mirror() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standin/mirror")
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(extra: &str) -> Self {
        Self::with_mirror(&example_mirror(), extra)
    }

    fn with_mirror(mirror: &Path, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[image]\nname = \"t\"\ndir = \"images\"\n\n[cygwin]\nmirror = \"{}\"\n\
             packages = [\"openssh\", \"cygvm-example-package-with-a-long-name-debuginfo\"]\n{extra}",
            mirror.display()
        );
        std::fs::write(dir.path().join("cygvm.toml"), config).unwrap();
        Self { dir }
    }

    fn media(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cygvm"))
            .args(["media", "--config"])
            .arg(self.dir.path().join("cygvm.toml"))
            .output()
            .unwrap()
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("images/t/media")
    }
}

/// A copy of the example mirror (at `<dir>/m`) a test may damage.
fn copied_mirror() -> tempfile::TempDir {
    let mirror = tempfile::tempdir().unwrap();
    tool(
        Command::new("cp")
            .arg("-r")
            .arg(example_mirror())
            .arg(mirror.path().join("m")),
        "coreutils",
    );
    mirror
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn tool(cmd: &mut Command, package: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (install package {package}): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn media_are_read_back_by_independent_tools() {
    let s = Setup::new("");
    let out = s.media();
    assert!(out.status.success(), "{}", stderr(&out));
    let media = s.out();

    // The floppy holds the answer file, byte for byte.
    let answer = std::fs::read(media.join("autounattend.xml")).unwrap();
    let on_floppy = tool(
        Command::new("mtype")
            .arg("-i")
            .arg(media.join("floppy.img"))
            .arg("::autounattend.xml"),
        "mtools",
    );
    assert_eq!(on_floppy, answer);
    tool(
        Command::new("fsck.fat")
            .arg("-n")
            .arg(media.join("floppy.img")),
        "dosfstools",
    );

    // Joliet names, as Windows reads them, include the 73-character archive.
    let listing = String::from_utf8(tool(
        Command::new("isoinfo")
            .args(["-J", "-f", "-i"])
            .arg(media.join("cygwin.iso")),
        "genisoimage",
    ))
    .unwrap();
    let long = "/mirror/x86_64/release/cygvm-example-package-with-a-long-name-debuginfo/\
                cygvm-example-package-with-a-long-name-debuginfo-0.4.20180214git-1.tar.xz";
    assert!(listing.lines().any(|l| l == long), "{listing}");
    for name in [
        "/CYGVM.TAG",
        "/setup-x86_64.exe",
        "/mirror/x86_64/setup.ini",
        "/cygvm/firstlogon.cmd",
        "/cygvm/bootstrap.sh",
        "/cygvm/authorized_keys",
        "/cygvm/ssh_host_ed25519_key",
    ] {
        assert!(
            listing.lines().any(|l| l == name),
            "{name} missing:\n{listing}"
        );
    }

    // Extract through Joliet only and compare every archive with the mirror.
    let x = tempfile::tempdir().unwrap();
    tool(
        Command::new("xorriso")
            .args(["-osirrox", "on", "-rockridge", "off", "-indev"])
            .arg(media.join("cygwin.iso"))
            .args(["-extract", "/"])
            .arg(x.path().join("iso")),
        "xorriso",
    );
    let iso = x.path().join("iso");
    let mut archives = 0;
    for entry in walk(&example_mirror().join("x86_64/release")) {
        let rel = entry.strip_prefix(example_mirror()).unwrap();
        let copy = iso.join("mirror").join(rel);
        if copy.exists() {
            archives += 1;
            assert_eq!(
                sha256(&std::fs::read(&entry).unwrap()),
                sha256(&std::fs::read(&copy).unwrap()),
                "{}",
                rel.display()
            );
        }
    }
    // base-files, cygwin, bash (Base), openssh, libssl3, cygrunsrv and the
    // long one.
    assert_eq!(archives, 7);
    assert!(
        !iso.join("mirror/x86_64/release/make").exists(),
        "make was not requested"
    );
    let ini = std::fs::read_to_string(iso.join("mirror/x86_64/setup.ini")).unwrap();
    assert!(
        ini.contains("@ openssh") && !ini.contains("@ make"),
        "{ini}"
    );

    // The marker names the media; the keys are the image's.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(media.join("media.json")).unwrap()).unwrap();
    let id = manifest["media_id"].as_str().unwrap();
    let marker = std::fs::read_to_string(iso.join("CYGVM.TAG")).unwrap();
    assert_eq!(marker.trim(), id);
    let secrets = s.dir.path().join("images/t/secrets");
    let client = std::fs::read_to_string(secrets.join("client_ed25519")).unwrap();
    let key = ssh_key::PrivateKey::from_openssh(&client).unwrap();
    let authorized = std::fs::read_to_string(iso.join("cygvm/authorized_keys")).unwrap();
    assert!(authorized.starts_with(&key.public_key().to_openssh().unwrap()));
    for f in manifest["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let bytes = std::fs::read(media.join(name)).unwrap();
        assert_eq!(f["sha256"].as_str().unwrap(), sha256(&bytes), "{name}");
    }

    // Media holding secrets are private.
    use std::os::unix::fs::PermissionsExt;
    for name in ["floppy.img", "cygwin.iso", "autounattend.xml"] {
        let mode = std::fs::metadata(media.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name} is readable by others");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_same_config_gives_identical_media() {
    let s = Setup::new("");
    assert!(s.media().status.success());
    let first: Vec<Vec<u8>> = ["floppy.img", "cygwin.iso"]
        .iter()
        .map(|n| std::fs::read(s.out().join(n)).unwrap())
        .collect();
    assert!(s.media().status.success());
    for (n, before) in ["floppy.img", "cygwin.iso"].iter().zip(first) {
        assert_eq!(
            std::fs::read(s.out().join(n)).unwrap(),
            before,
            "{n} differs"
        );
    }
}

#[test]
fn a_corrupt_archive_fails_and_keeps_the_previous_media() {
    let mirror = copied_mirror();
    let m = mirror.path().join("m");
    let s = Setup::with_mirror(&m, "");
    assert!(s.media().status.success());
    let iso_before = std::fs::read(s.out().join("cygwin.iso")).unwrap();

    // Same size, one byte changed: only the hash can tell.
    let victim = m.join("x86_64/release/openssh/openssh-1.0-1.tar.xz");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    // A new cache, so the verified copy from the first run is not reused.
    std::fs::remove_dir_all(s.dir.path().join("images/.cache")).unwrap();

    let out = s.media();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("package openssh"), "{err}");
    assert!(err.contains("but the index expects"), "{err}");
    assert_eq!(
        std::fs::read(s.out().join("cygwin.iso")).unwrap(),
        iso_before
    );
    let leftovers: Vec<_> = std::fs::read_dir(s.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

#[test]
fn an_unknown_package_is_named_with_a_suggestion() {
    let s = Setup::new("");
    let cfg = s.dir.path().join("cygvm.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"openssh\"", "\"opensh\"");
    std::fs::write(&cfg, text).unwrap();
    let out = s.media();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("opensh"), "{err}");
    assert!(err.contains("openssh"), "no suggestion: {err}");
    assert!(!s.out().join("media.json").exists());
}

#[test]
fn an_old_windows_with_a_new_index_is_refused() {
    let s = Setup::new("[guest]\nversion = \"7\"\n");
    let out = s.media();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("need Windows NT 6.3"), "{err}");
    assert!(err.contains("guest.version = \"7\""), "{err}");
}

#[test]
fn windows_without_setup_exe_names_the_key() {
    let mirror = copied_mirror();
    let m = mirror.path().join("m");
    std::fs::remove_file(m.join("setup-x86_64.exe")).unwrap();
    let s = Setup::with_mirror(&m, "");
    let out = s.media();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cygwin.setup_exe"), "{err}");
    assert!(err.contains("setup-x86_64.exe"), "{err}");
}

#[test]
fn a_missing_mirror_is_named() {
    let s = Setup::with_mirror(Path::new("/nonexistent/mirror"), "");
    let out = s.media();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/mirror"), "{err}");
    assert!(err.contains("x86_64/setup.ini"), "{err}");
}

/// A small valid `.tar.xz` holding one file that names the package.
fn tiny_tar_xz(package: &str) -> Vec<u8> {
    use std::io::Write;
    let body = format!("{package}\n");
    let mut header = [0u8; 512];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, format!("usr/share/doc/{package}.txt").as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", body.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\x0000");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(body.as_bytes());
    tar.resize(512 + 512 + 1024, 0);
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&tar).unwrap();
    xz.finish().unwrap()
}

fn sha512(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha512::digest(bytes))
}

/// The complete 2025 index with every archive the closure of `packages`
/// needs generated small under `top`, and those packages' `install:` lines
/// rewritten to the generated sizes and sha512s; other stanzas are verbatim.
fn fake_mirror_from_real_index(top: &Path, packages: &[&str]) -> Option<Vec<(String, String)>> {
    use cygvm::cygwin::{SetupIni, resolve};
    let ini = SetupIni::read(&fixture("setup-x86_64-20250802.xz")?).unwrap();
    let closure = resolve(&ini, packages).unwrap();
    let mut order = closure.packages.clone();
    order.sort_unstable();
    let mut text = String::with_capacity(ini.text.len());
    let mut done = 0;
    let mut archives = Vec::new();
    for i in order {
        let p = &ini.packages[i];
        let Some(a) = &p.install else { continue };
        let bytes = tiny_tar_xz(&p.name);
        let path = top.join(&a.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let old = format!("install: {} {} {}", a.path, a.size, a.hash);
        let new = format!("install: {} {} {}", a.path, bytes.len(), sha512(&bytes));
        let stanza = &ini.text[p.text_range.clone()];
        assert!(stanza.contains(&old), "{}: {old}", p.name);
        text.push_str(&ini.text[done..p.text_range.start]);
        text.push_str(&stanza.replacen(&old, &new, 1));
        done = p.text_range.end;
        archives.push((a.path.clone(), sha512(&bytes)));
    }
    text.push_str(&ini.text[done..]);
    std::fs::create_dir_all(top.join("x86_64")).unwrap();
    std::fs::write(top.join("x86_64/setup.ini"), text).unwrap();
    std::fs::copy(
        example_mirror().join("setup-x86_64.exe"),
        top.join("setup-x86_64.exe"),
    )
    .unwrap();
    Some(archives)
}

#[test]
fn media_from_a_mirror_with_the_real_2025_index() {
    const LONG: &str = "mingw64-x86_64-google-breakpad-debuginfo";
    let mirror = tempfile::tempdir().unwrap();
    let Some(archives) = fake_mirror_from_real_index(mirror.path(), &["openssh", LONG]) else {
        return;
    };
    // The real names: openssh, Base, and a 70-character archive name.
    assert!(archives.len() > 80, "{}", archives.len());
    let long = archives
        .iter()
        .map(|(path, _)| path.as_str())
        .find(|p| p.contains(LONG))
        .unwrap();
    assert_eq!(
        long.rsplit('/').next().unwrap(),
        "mingw64-x86_64-google-breakpad-debuginfo-20171117_git70914b2d-1.tar.xz"
    );
    assert!(long.rsplit('/').next().unwrap().len() > 64);
    tool(
        Command::new("tar")
            .arg("-tJf")
            .arg(mirror.path().join(long)),
        "tar",
    );

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[image]\nname = \"t\"\ndir = \"images\"\n\n[cygwin]\nmirror = \"{}\"\n\
         packages = [\"openssh\", \"{LONG}\"]\n",
        mirror.path().display()
    );
    std::fs::write(dir.path().join("cygvm.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cygvm"))
        .args(["media", "--config"])
        .arg(dir.path().join("cygvm.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let iso_path = dir.path().join("images/t/media/cygwin.iso");

    // Every archive is on the ISO under the path its setup.ini names, as
    // Windows reads it (Joliet), byte for byte.
    let listing = String::from_utf8(tool(
        Command::new("isoinfo")
            .args(["-J", "-f", "-i"])
            .arg(&iso_path),
        "genisoimage",
    ))
    .unwrap();
    let x = tempfile::tempdir().unwrap();
    tool(
        Command::new("xorriso")
            .args(["-osirrox", "on", "-rockridge", "off", "-indev"])
            .arg(&iso_path)
            .args(["-extract", "/mirror"])
            .arg(x.path().join("mirror")),
        "xorriso",
    );
    let on_iso = x.path().join("mirror");
    let ini = cygvm::cygwin::SetupIni::read(&on_iso.join("x86_64/setup.ini")).unwrap();
    let named: Vec<&str> = ini
        .packages
        .iter()
        .filter_map(|p| p.install.as_ref().map(|a| a.path.as_str()))
        .collect();
    assert_eq!(named.len(), archives.len());
    for (path, hash) in &archives {
        assert!(
            named.contains(&path.as_str()),
            "{path} not in the ISO's setup.ini"
        );
        let joliet = format!("/mirror/{path}");
        assert!(listing.lines().any(|l| l == joliet), "{joliet} missing");
        let bytes = std::fs::read(on_iso.join(path)).unwrap();
        assert_eq!(&sha512(&bytes), hash, "{path}");
    }
    assert!(ini.package("openssh").is_some() && ini.package("cygwin").is_some());
    assert!(ini.package("byobu").is_none());
}
