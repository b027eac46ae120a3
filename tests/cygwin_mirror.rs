//! Local mirrors built from a directory and from an HTTP server (with
//! resumed downloads), and the `cygvm cygwin` commands end to end.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use cygvm::cygwin::{
    MirrorSource, SetupIni, build_local_mirror, fetch_setup_exe, locate_setup_exe, resolve,
};
use sha2::{Digest, Sha512};

struct Fixture {
    _dir: tempfile::TempDir,
    source: std::path::PathBuf,
    cache: std::path::PathBuf,
    dest: std::path::PathBuf,
    ini_path: std::path::PathBuf,
}

fn archive_bytes(name: &str, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ name.len() as u8)
        .collect()
}

/// A mirror directory with three archives and an index whose hashes are
/// computed here; `ccc` is not in the closure of `aaa`.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let mut ini = String::from(
        "# generated for a test\nrelease: cygwin\narch: x86_64\nsetup-timestamp: 1700000000\nsetup-version: 2.934\n\n",
    );
    for (name, deps, category, len) in [
        ("aaa", "bbb, virt", "Devel", 300_000usize),
        ("bbb", "", "Libs", 1000),
        ("base-thing", "", "Base", 10),
        ("ccc", "", "Devel", 20),
    ] {
        let bytes = archive_bytes(name, len);
        let rel = format!("x86_64/release/{name}/{name}-1.0-1.tar.xz");
        fs::create_dir_all(source.join(&rel).parent().unwrap()).unwrap();
        fs::write(source.join(&rel), &bytes).unwrap();
        let hash = hex::encode(Sha512::digest(&bytes));
        ini.push_str(&format!(
            "@ {name}\nsdesc: \"The {name} package\"\nldesc: \"Long text\n[not a section]\nWord: not a key\"\ncategory: {category}\nversion: 1.0-1\ninstall: {rel} {len} {hash}\ndepends2: {deps}\n[prev]\nversion: 0.9-1\ninstall: x86_64/release/{name}/{name}-0.9-1.tar.xz 5 {hash}\n\n"
        ));
    }
    ini.push_str("@ virt\nsdesc: \"Virtual\"\ncategory: _obsolete\nversion: 1\n");
    let ini_path = dir.path().join("setup.ini");
    fs::write(&ini_path, &ini).unwrap();
    Fixture {
        source: source.clone(),
        cache: dir.path().join("cache"),
        dest: dir.path().join("dest"),
        ini_path,
        _dir: dir,
    }
}

/// Builds the closure of `aaa`; errors come back as the message a user sees.
fn build(f: &Fixture, source: &MirrorSource) -> Result<cygvm::cygwin::LocalMirror, String> {
    let index = SetupIni::read(&f.ini_path).unwrap();
    let closure = resolve(&index, &["aaa"]).unwrap();
    build_local_mirror(&index, &closure, source, &f.cache, &f.dest).map_err(|e| e.to_string())
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn mirror_from_a_directory_lays_out_what_setup_exe_reads() {
    let f = fixture();
    let mirror = build(&f, &MirrorSource::Dir(f.source.clone())).unwrap();

    let listed: Vec<(&str, u64)> = mirror
        .files
        .iter()
        .map(|m| (m.path.as_str(), m.size))
        .collect();
    let ini_len = fs::metadata(f.dest.join("x86_64/setup.ini")).unwrap().len();
    assert_eq!(
        listed,
        [
            ("x86_64/setup.ini", ini_len),
            ("x86_64/release/aaa/aaa-1.0-1.tar.xz", 300_000),
            ("x86_64/release/base-thing/base-thing-1.0-1.tar.xz", 10),
            ("x86_64/release/bbb/bbb-1.0-1.tar.xz", 1000),
        ]
    );
    for m in &mirror.files[1..] {
        assert_eq!(
            fs::read(f.dest.join(&m.path)).unwrap(),
            fs::read(f.source.join(&m.path)).unwrap()
        );
    }
    assert!(!f.dest.join("x86_64/release/ccc").exists());
    assert_eq!(mirror.fetched, 3);

    let ini = fs::read_to_string(f.dest.join("x86_64/setup.ini")).unwrap();
    assert!(ini.starts_with("# generated for a test\nrelease: cygwin\narch: x86_64\n"));
    assert!(ini.contains("@ aaa\nsdesc: \"The aaa package\"\nldesc: \"Long text\n[not a section]\nWord: not a key\"\n"));
    assert!(ini.contains("@ virt\n"));
    assert!(!ini.contains("@ ccc"));
    assert!(!ini.contains("[prev]"));
    assert!(!ini.contains("0.9-1"));
    // The reduced index is itself a valid index with the same closure.
    let reparsed = SetupIni::parse("reduced", ini).unwrap();
    assert_eq!(reparsed.packages.len(), 4);
    assert_eq!(resolve(&reparsed, &["aaa"]).unwrap().len(), 4);

    // A second run uses the cache only.
    let again = build(&f, &MirrorSource::Dir(f.source.clone())).unwrap();
    assert_eq!(again.fetched, 0);
    assert_eq!(again.files, mirror.files);
}

#[test]
fn corrupted_archive_is_never_used() {
    let f = fixture();
    let rel = "x86_64/release/bbb/bbb-1.0-1.tar.xz";
    let mut bytes = fs::read(f.source.join(rel)).unwrap();
    bytes[500] ^= 0xff;
    fs::write(f.source.join(rel), &bytes).unwrap();
    let actual = hex::encode(Sha512::digest(&bytes));
    let expected = hex::encode(Sha512::digest(archive_bytes("bbb", 1000)));

    let err = build(&f, &MirrorSource::Dir(f.source.clone())).unwrap_err();
    assert!(err.contains("package bbb"), "{err}");
    assert!(err.contains(&format!("has sha512 {actual}")), "{err}");
    assert!(err.contains(&format!("expects {expected}")), "{err}");
    assert!(!f.dest.join(rel).exists());
    let cached: Vec<String> = files_under(&f.cache);
    assert!(
        !cached.iter().any(|p| p.contains(&expected)),
        "corrupt file left in cache: {cached:?}"
    );

    // A wrong size is caught too, and named.
    fs::write(f.source.join(rel), b"short").unwrap();
    let err = build(&f, &MirrorSource::Dir(f.source.clone())).unwrap_err();
    assert!(err.contains("package bbb"), "{err}");
    assert!(
        err.contains("is 5 bytes, but the index expects 1000"),
        "{err}"
    );
}

#[test]
fn missing_archive_in_source_directory_says_what_to_fix() {
    let f = fixture();
    fs::remove_file(f.source.join("x86_64/release/bbb/bbb-1.0-1.tar.xz")).unwrap();
    let err = build(&f, &MirrorSource::Dir(f.source.clone())).unwrap_err();
    assert!(
        err.contains("package bbb: x86_64/release/bbb/bbb-1.0-1.tar.xz is not in"),
        "{err}"
    );
    assert!(err.contains("top of a Cygwin mirror"), "{err}");
}

/// A tiny HTTP/1.1 server over `root` that honours `Range: bytes=N-` unless
/// `ignore_range`, and records each request's path and Range header.
/// One served request: path, Range header, body bytes sent.
type Served = (String, Option<String>, usize);

struct Server {
    url: String,
    log: Arc<Mutex<Vec<Served>>>,
}

fn serve(root: &Path, ignore_range: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let (root, log2) = (root.to_path_buf(), log.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("range")
                {
                    range = Some(v.trim().to_string());
                }
            }
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts
                .next()
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let body = fs::read(root.join(&path));
            let Ok(body) = body else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                log2.lock().unwrap().push((path, range, 0));
                continue;
            };
            let start = range
                .as_deref()
                .filter(|_| !ignore_range)
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok());
            let (status, head_extra, slice) = match start {
                Some(s) if s < body.len() => (
                    "206 Partial Content",
                    format!(
                        "Content-Range: bytes {s}-{}/{}\r\n",
                        body.len() - 1,
                        body.len()
                    ),
                    &body[s..],
                ),
                _ => ("200 OK", String::new(), &body[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{head_extra}Connection: close\r\n\r\n",
                slice.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let sent = if method == "HEAD" {
                0
            } else {
                let _ = stream.write_all(slice);
                slice.len()
            };
            log2.lock().unwrap().push((path, range, sent));
        }
    });
    Server { url, log }
}

fn part_path(f: &Fixture, name: &str, len: usize) -> std::path::PathBuf {
    let hash = hex::encode(Sha512::digest(archive_bytes(name, len)));
    f.cache.join("sha512").join(format!("{hash}.part"))
}

#[test]
fn http_download_resumes_a_partial_file() {
    let f = fixture();
    let server = serve(&f.source, false);
    let full = archive_bytes("aaa", 300_000);
    let part = part_path(&f, "aaa", 300_000);
    fs::create_dir_all(part.parent().unwrap()).unwrap();
    fs::write(&part, &full[..120_000]).unwrap();

    let mirror = build(&f, &MirrorSource::parse(&server.url)).unwrap();
    assert_eq!(mirror.fetched, 3);
    assert_eq!(
        fs::read(f.dest.join("x86_64/release/aaa/aaa-1.0-1.tar.xz")).unwrap(),
        full
    );
    assert!(!part.exists());
    let log = server.log.lock().unwrap().clone();
    let aaa: Vec<_> = log
        .iter()
        .filter(|(p, _, _)| p.contains("aaa-1.0-1"))
        .collect();
    assert_eq!(aaa.len(), 1, "{log:?}");
    assert_eq!(aaa[0].1.as_deref(), Some("bytes=120000-"));
    assert_eq!(aaa[0].2, 180_000, "only the missing bytes are sent");
}

#[test]
fn http_server_without_range_support_still_gives_a_whole_file() {
    let f = fixture();
    let server = serve(&f.source, true);
    let part = part_path(&f, "aaa", 300_000);
    fs::create_dir_all(part.parent().unwrap()).unwrap();
    // A stale part that is not even a prefix of the real file.
    fs::write(&part, vec![0xaa; 50_000]).unwrap();

    build(&f, &MirrorSource::parse(&server.url)).unwrap();
    assert_eq!(
        fs::read(f.dest.join("x86_64/release/aaa/aaa-1.0-1.tar.xz")).unwrap(),
        archive_bytes("aaa", 300_000)
    );
}

#[test]
fn http_resume_of_a_bad_part_downloads_whole_once() {
    let f = fixture();
    let server = serve(&f.source, false);
    let part = part_path(&f, "aaa", 300_000);
    fs::create_dir_all(part.parent().unwrap()).unwrap();
    // Right length prefix, wrong bytes: the resumed result fails its hash.
    fs::write(&part, vec![0x55; 100_000]).unwrap();

    build(&f, &MirrorSource::parse(&server.url)).unwrap();
    assert_eq!(
        fs::read(f.dest.join("x86_64/release/aaa/aaa-1.0-1.tar.xz")).unwrap(),
        archive_bytes("aaa", 300_000)
    );
    let log = server.log.lock().unwrap().clone();
    let ranges: Vec<_> = log
        .iter()
        .filter(|(p, _, _)| p.contains("aaa-1.0-1"))
        .map(|(_, r, _)| r.clone())
        .collect();
    assert_eq!(ranges, [Some("bytes=100000-".to_string()), None]);
}

#[test]
fn setup_exe_is_found_at_the_mirror_top() {
    let f = fixture();
    let source = MirrorSource::Dir(f.source.clone());
    let err = locate_setup_exe(&source, "x86_64").unwrap_err().to_string();
    assert!(err.starts_with("no setup-x86_64.exe at "), "{err}");
    assert!(err.contains("https://cygwin.com/setup-x86_64.exe"), "{err}");

    fs::write(f.source.join("setup-x86_64.exe"), b"MZ\x90\x00rest").unwrap();
    let server = serve(&f.source, false);
    let http = MirrorSource::parse(&server.url);
    assert_eq!(
        locate_setup_exe(&http, "x86_64").unwrap(),
        cygvm::cygwin::SetupExe::Remote(format!("{}setup-x86_64.exe", server.url))
    );
    let out = f.dest.join("setup.exe");
    fs::create_dir_all(&f.dest).unwrap();
    assert_eq!(fetch_setup_exe(&http, "x86_64", &out).unwrap(), 8);
    assert_eq!(fs::read(&out).unwrap(), b"MZ\x90\x00rest");

    fs::write(f.source.join("setup-x86_64.exe"), b"<html>").unwrap();
    let bad = f.dest.join("bad.exe");
    let err = fetch_setup_exe(&source, "x86_64", &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a Windows executable"), "{err}");
    assert!(!bad.exists());
}

fn cygvm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cygvm"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_resolve_and_mirror_end_to_end() {
    let f = fixture();
    let ini = f.ini_path.to_str().unwrap();

    let (code, stdout, stderr) = cygvm(&["cygwin", "resolve", "--setup-ini", ini, "aaa"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "aaa\nbase-thing\nbbb\nvirt\n");

    let (code, stdout, _) = cygvm(&["cygwin", "resolve", "--setup-ini", ini, "--json", "aaa"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json[0]["name"], "aaa");
    assert_eq!(json[0]["size"], 300_000);
    assert_eq!(json[0]["path"], "x86_64/release/aaa/aaa-1.0-1.tar.xz");
    assert_eq!(json[0]["hash_algorithm"], "sha512");
    assert_eq!(json[0]["hash"].as_str().unwrap().len(), 128);
    assert_eq!(json[3]["name"], "virt");
    assert!(json[3]["path"].is_null());

    let (code, stdout, stderr) = cygvm(&["cygwin", "resolve", "--setup-ini", ini, "aab"]);
    assert_ne!(code, 0);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("error: package \"aab\" is not in"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean aaa"), "{stderr}");

    let broken = f.dest.with_extension("bad.ini");
    fs::write(&broken, "@ a\nversion: 1\nldesc: \"open\n").unwrap();
    let (code, _, stderr) = cygvm(&[
        "cygwin",
        "resolve",
        "--setup-ini",
        broken.to_str().unwrap(),
        "a",
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("{}:3: quoted `ldesc:` value", broken.display())),
        "{stderr}"
    );

    let to = f.dest.to_str().unwrap();
    let cache = f.cache.to_str().unwrap();
    let from = f.source.to_str().unwrap();
    let (code, stdout, stderr) = cygvm(&[
        "cygwin",
        "mirror",
        "--setup-ini",
        ini,
        "--from",
        from,
        "--to",
        to,
        "--cache",
        cache,
        "aaa",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("4 packages, 4 files"), "{stdout}");
    assert!(f.dest.join("x86_64/setup.ini").is_file());
    let mut body = Vec::new();
    fs::File::open(f.dest.join("x86_64/release/bbb/bbb-1.0-1.tar.xz"))
        .unwrap()
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(body, archive_bytes("bbb", 1000));
}

#[test]
fn cli_mirror_of_a_test_version_installs_it_as_current() {
    let f = fixture();
    // A test-only package: its archive exists in the source mirror under
    // the path its [test] section names.
    let bytes = archive_bytes("tonly", 4321);
    let rel = "noarch/release/tonly/tonly-2.0-1.tar.xz";
    fs::create_dir_all(f.source.join(rel).parent().unwrap()).unwrap();
    fs::write(f.source.join(rel), &bytes).unwrap();
    let hash = hex::encode(Sha512::digest(&bytes));
    let mut text = fs::read_to_string(&f.ini_path).unwrap();
    text.push_str(&format!(
        "\n@ tonly\nsdesc: \"Only in test\"\ncategory: Utils\n[test]\nversion: 2.0-1\ninstall: {rel} 4321 {hash}\ndepends2: bbb\n"
    ));
    fs::write(&f.ini_path, text).unwrap();
    let (ini, to, cache, from) = (
        f.ini_path.to_str().unwrap(),
        f.dest.to_str().unwrap(),
        f.cache.to_str().unwrap(),
        f.source.to_str().unwrap(),
    );
    let mirror = |package: &str| {
        cygvm(&[
            "cygwin",
            "mirror",
            "--setup-ini",
            ini,
            "--from",
            from,
            "--to",
            to,
            "--cache",
            cache,
            package,
        ])
    };

    let (code, _, stderr) = mirror("tonly");
    assert_ne!(code, 0);
    assert!(
        stderr.contains("has only a test version (2.0-1)") && stderr.contains("`tonly=test`"),
        "{stderr}"
    );
    assert!(!f.dest.join(rel).exists());

    let (code, stdout, stderr) = mirror("tonly=test");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("3 packages, 4 files"), "{stdout}");
    assert_eq!(fs::read(f.dest.join(rel)).unwrap(), bytes);
    // What the guest's setup reads: the test version as the only, current one.
    let written = fs::read_to_string(f.dest.join("x86_64/setup.ini")).unwrap();
    assert!(
        written.contains(&format!(
            "@ tonly\nsdesc: \"Only in test\"\ncategory: Utils\nversion: 2.0-1\ninstall: {rel} 4321 {hash}\n"
        )),
        "{written}"
    );
    assert!(!written.contains("[test]"), "{written}");
    let again = SetupIni::read(&f.dest.join("x86_64/setup.ini")).unwrap();
    let closure = resolve(&again, &["tonly"]).unwrap();
    assert_eq!(
        closure.names(&again).collect::<Vec<_>>(),
        ["base-thing", "bbb", "tonly"]
    );
}
