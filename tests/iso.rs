//! The Cygwin ISO, read back by independent tools: xorriso (extraction),
//! isoinfo from genisoimage (descriptors, Joliet and Rock Ridge listings, file
//! reads) and 7z (Joliet listing).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cygvm::fsutil::sha256_file;
use cygvm::media::iso::{FileSource, IsoBuilder, IsoError};

/// Runs an external tool; a missing tool fails the test with the package to install.
fn run(tool: &str, package: &str, args: &[&str]) -> Output {
    match Command::new(tool).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!(
                "`{tool}` is not installed; install the Debian package `{package}` (scripts/install-deps)"
            )
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

fn run_ok(tool: &str, package: &str, args: &[&str]) -> Output {
    let out = run(tool, package, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const LONG_NAME: &str =
    "pidgin-funyahoo-plusplus-debuginfo-0-0.4.20180214git-1-with-a-longer-tail.tar.xz";
const LONG_DIR: &str = "pidgin-funyahoo-plusplus-debuginfo";

/// The files of the test image: ISO path → contents.
fn sample() -> BTreeMap<String, Vec<u8>> {
    let big: Vec<u8> = (0..5 * 1024 * 1024 + 123u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut files = BTreeMap::new();
    let mut add = |p: &str, c: &[u8]| {
        files.insert(p.to_string(), c.to_vec());
    };
    add("setup-x86_64.exe", b"MZ not really");
    add("CYGVM-MEDIA.txt", b"cygvm media marker\n");
    add(
        "mirror/x86_64/setup.ini",
        b"release: cygwin\narch: x86_64\n",
    );
    add(
        "mirror/x86_64/release/gcc/libstdc++6/libstdc++6-13.2.0-1.tar.xz",
        b"libstdc++",
    );
    add(
        "mirror/x86_64/release/gcc/libstdc++6/libstdc++6-13.2.0-1.hint",
        b"sdesc: \"c++\"\n",
    );
    add(
        &format!("mirror/x86_64/release/pidgin/{LONG_DIR}/{LONG_NAME}"),
        b"long name contents",
    );
    add(
        "mirror/x86_64/release/Mixed.Case-Name_1.0+x/EMPTY.file",
        b"",
    );
    add("mirror/x86_64/release/Mixed.Case-Name_1.0+x/big.bin", &big);
    add(
        "mirror/x86_64/release/Mixed.Case-Name_1.0+x/noext",
        b"no extension",
    );
    // Names whose primary identifiers collide after mangling.
    add("collide/a+b.txt", b"plus");
    add("collide/a-b.txt", b"dash");
    add("collide/A_B.TXT", b"upper");
    files
}

/// Builds the sample ISO: small files from memory, the rest from a host tree.
fn build(dir: &Path, name: &str) -> PathBuf {
    let host = dir.join(format!("{name}-src"));
    let mut b = IsoBuilder::new("CYGWIN_2025").unwrap();
    for (path, contents) in sample() {
        if path.starts_with("mirror/") {
            let p = host.join(path.strip_prefix("mirror/").unwrap());
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, &contents).unwrap();
        } else {
            b.add_file(&path, FileSource::Bytes(contents)).unwrap();
        }
    }
    b.add_tree("mirror", &host).unwrap();
    let iso = dir.join(format!("{name}.iso"));
    let summary = b.write_to(&iso).unwrap();
    assert_eq!(summary.files, sample().len());
    assert_eq!(summary.image_bytes, fs::metadata(&iso).unwrap().len());
    iso
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            out.insert(rel, sha256_file(&p).unwrap());
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Extracts the whole image with xorriso, through Rock Ridge or (like
/// Windows) through the Joliet tree, and returns path → sha256.
fn extract(iso: &Path, out: &Path, joliet: bool) -> BTreeMap<String, String> {
    let tree: &[&str] = if joliet {
        &["-rockridge", "off", "-joliet", "on"]
    } else {
        &["-rockridge", "on"]
    };
    let mut args: Vec<&str> = tree.to_vec();
    args.extend([
        "-osirrox",
        "on",
        "-indev",
        iso.to_str().unwrap(),
        "-extract",
        "/",
        out.to_str().unwrap(),
    ]);
    let res = run_ok("xorriso", "xorriso", &args);
    let log = String::from_utf8_lossy(&res.stderr);
    for bad in ["WARNING", "SORRY", "FAILURE"] {
        assert!(!log.contains(bad), "xorriso complained:\n{log}");
    }
    let mut got = BTreeMap::new();
    walk(out, out, &mut got);
    got
}

#[test]
fn xorriso_extracts_every_file_with_exact_names_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let iso = build(dir.path(), "a");
    let want: BTreeMap<String, String> =
        sample().into_iter().map(|(p, c)| (p, sha256(&c))).collect();
    assert_eq!(extract(&iso, &dir.path().join("rr"), false), want);
    assert_eq!(extract(&iso, &dir.path().join("joliet"), true), want);
}

#[test]
fn isoinfo_sees_volume_id_joliet_and_rock_ridge() {
    let dir = tempfile::tempdir().unwrap();
    let iso = build(dir.path(), "a");
    let iso = iso.to_str().unwrap();

    let d = text(&run_ok("isoinfo", "genisoimage", &["-d", "-i", iso]));
    assert!(d.contains("Volume id: CYGWIN_2025"), "{d}");
    assert!(d.contains("Joliet with UCS level 3 found"), "{d}");
    assert!(d.contains("Rock Ridge signatures version 1 found"), "{d}");
    assert!(d.contains("Logical block size is: 2048"), "{d}");

    // Joliet listing: the full 80-character name, the '+' names, mixed case.
    let j = text(&run_ok("isoinfo", "genisoimage", &["-J", "-l", "-i", iso]));
    for name in [
        LONG_NAME,
        "libstdc++6-13.2.0-1.tar.xz",
        "Mixed.Case-Name_1.0+x",
        "a+b.txt",
    ] {
        assert!(j.contains(name), "Joliet listing lacks {name}:\n{j}");
    }

    // Rock Ridge listing: real names on the primary tree.
    let r = text(&run_ok("isoinfo", "genisoimage", &["-R", "-l", "-i", iso]));
    for name in [
        LONG_NAME,
        "libstdc++6",
        "EMPTY.file",
        "noext",
        "a-b.txt",
        "A_B.TXT",
    ] {
        assert!(r.contains(name), "Rock Ridge listing lacks {name}:\n{r}");
    }
    assert!(r.contains("-r--r--r--"), "{r}");
    assert!(r.contains("dr-xr-xr-x"), "{r}");

    // Reading through Joliet by the full long path.
    let path = format!("/mirror/x86_64/release/pidgin/{LONG_DIR}/{LONG_NAME}");
    let x = run_ok("isoinfo", "genisoimage", &["-J", "-i", iso, "-x", &path]);
    assert_eq!(x.stdout, b"long name contents");
    let x = run_ok(
        "isoinfo",
        "genisoimage",
        &[
            "-J",
            "-i",
            iso,
            "-x",
            "/mirror/x86_64/release/Mixed.Case-Name_1.0+x/big.bin",
        ],
    );
    assert_eq!(
        sha256(&x.stdout),
        sha256(&sample()["mirror/x86_64/release/Mixed.Case-Name_1.0+x/big.bin"])
    );

    // The plain ISO 9660 view reads without errors and shows mangled names.
    let p = text(&run_ok("isoinfo", "genisoimage", &["-l", "-i", iso]));
    assert!(p.contains("SETUP_X86_64.EXE;1"), "{p}");
    assert!(p.contains("A_B1.TXT;1") && p.contains("A_B2.TXT;1"), "{p}");
}

#[test]
fn seven_zip_lists_joliet_names() {
    let dir = tempfile::tempdir().unwrap();
    let iso = build(dir.path(), "a");
    let l = text(&run_ok("7z", "p7zip-full", &["l", iso.to_str().unwrap()]));
    for name in [
        format!("mirror/x86_64/release/pidgin/{LONG_DIR}/{LONG_NAME}"),
        "mirror/x86_64/release/gcc/libstdc++6/libstdc++6-13.2.0-1.tar.xz".into(),
        "mirror/x86_64/release/Mixed.Case-Name_1.0+x/EMPTY.file".into(),
        "CYGVM-MEDIA.txt".into(),
    ] {
        assert!(l.contains(&name), "7z lacks {name}:\n{l}");
    }
}

#[test]
fn images_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let a = build(dir.path(), "a");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = build(dir.path(), "b");
    assert_eq!(sha256_file(&a).unwrap(), sha256_file(&b).unwrap());
}

#[test]
fn name_over_103_characters_is_an_error_naming_the_path() {
    let mut b = IsoBuilder::new("CYGVM").unwrap();
    let ok = format!("d/{}", "n".repeat(103));
    b.add_file(&ok, FileSource::Bytes(vec![])).unwrap();
    let long = format!("mirror/{}.tar.xz", "x".repeat(97));
    let err = b.add_file(&long, FileSource::Bytes(vec![])).unwrap_err();
    assert!(matches!(err, IsoError::BadPath { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&long) && msg.contains("103"), "{msg}");

    let deep = "1/2/3/4/5/6/7/8/file";
    let err = b.add_file(deep, FileSource::Bytes(vec![])).unwrap_err();
    assert!(err.to_string().contains(deep), "{err}");
    b.add_file("1/2/3/4/5/6/7/file", FileSource::Bytes(vec![]))
        .unwrap();
}

#[test]
fn bad_labels_are_rejected() {
    for label in ["", "lower", "WITH SPACE", "DASH-ED", &"A".repeat(33)] {
        let err = IsoBuilder::new(label).unwrap_err();
        assert!(matches!(err, IsoError::BadLabel { .. }), "{label}: {err:?}");
        assert!(err.to_string().contains(&format!("{label:?}")), "{err}");
    }
    IsoBuilder::new(&"A".repeat(32)).unwrap();
}

#[test]
fn duplicate_and_conflicting_paths_are_rejected() {
    let mut b = IsoBuilder::new("CYGVM").unwrap();
    b.add_file("a/b.txt", FileSource::Bytes(vec![1])).unwrap();
    let err = b
        .add_file("/a/b.txt", FileSource::Bytes(vec![2]))
        .unwrap_err();
    assert!(matches!(err, IsoError::Duplicate { .. }), "{err:?}");
    assert!(err.to_string().contains("a/b.txt"), "{err}");
    let err = b
        .add_file("a/b.txt/c", FileSource::Bytes(vec![]))
        .unwrap_err();
    assert!(matches!(err, IsoError::FileAndDir { .. }), "{err:?}");
    let err = b.add_file("a", FileSource::Bytes(vec![])).unwrap_err();
    assert!(matches!(err, IsoError::FileAndDir { .. }), "{err:?}");
    for bad in ["", "a//b", "a/../b", "what?", "a:b", "caf\u{e9}"] {
        let err = b.add_file(bad, FileSource::Bytes(vec![])).unwrap_err();
        assert!(matches!(err, IsoError::BadPath { .. }), "{bad}: {err:?}");
    }
}

#[test]
fn missing_source_names_host_path_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-there.tar.xz");
    let mut b = IsoBuilder::new("CYGVM").unwrap();
    b.add_file("x/ok", FileSource::Bytes(b"fine".to_vec()))
        .unwrap();
    b.add_file("x/gone.tar.xz", FileSource::Path(missing.clone()))
        .unwrap();
    let out = dir.path().join("out.iso");
    let err = b.write_to(&out).unwrap_err();
    assert!(matches!(err, IsoError::Source { .. }), "{err:?}");
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    assert!(!out.exists());
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn empty_image_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("empty.iso");
    let summary = IsoBuilder::new("EMPTY").unwrap().write_to(&iso).unwrap();
    assert_eq!(summary.files, 0);
    let d = text(&run_ok(
        "isoinfo",
        "genisoimage",
        &["-d", "-i", iso.to_str().unwrap()],
    ));
    assert!(d.contains("Volume id: EMPTY"), "{d}");
    run_ok(
        "xorriso",
        "xorriso",
        &["-indev", iso.to_str().unwrap(), "-find", "/"],
    );
}

#[test]
fn large_directories_span_sectors_and_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = IsoBuilder::new("MANY").unwrap();
    let mut want = BTreeMap::new();
    for i in 0..400 {
        let path =
            format!("release/many/package-with-a-fairly-long-name-{i:04}-1.0-1-x86_64.tar.xz");
        let contents = format!("file {i}").into_bytes();
        want.insert(path.clone(), sha256(&contents));
        b.add_file(&path, FileSource::Bytes(contents)).unwrap();
    }
    let iso = dir.path().join("many.iso");
    b.write_to(&iso).unwrap();
    assert_eq!(extract(&iso, &dir.path().join("rr"), false), want);
    assert_eq!(extract(&iso, &dir.path().join("joliet"), true), want);
}
