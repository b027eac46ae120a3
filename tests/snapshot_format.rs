//! state.gz: writer → file → reader, checked against real gzip, damage
//! detection, interrupted saves, and the async path over unix sockets.

#[path = "common/synthetic.rs"]
mod synthetic;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cygvm::snapshot::{
    CodecOptions, MigrationWriter, RestoreError, StateSummary, VerifyError, restore, restore_async,
    verify,
};

const MIB: usize = 1 << 20;

fn opts() -> CodecOptions {
    CodecOptions {
        member_size: MIB,
        ..CodecOptions::default()
    }
}

fn save(dest: &Path, data: &[u8], opts: CodecOptions) -> StateSummary {
    let writer = MigrationWriter::create(dest, opts).unwrap();
    writer.save(data).unwrap().commit().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn forty_mib_round_trip_matches_and_real_gzip_agrees() {
    let data = synthetic::stream(40 * MIB + 12345, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.gz");
    let summary = save(&path, &data, CodecOptions::default());

    assert_eq!(summary.stream_len, data.len() as u64);
    assert_eq!(summary.stream_sha256, sha256_hex(&data));
    assert_eq!(summary.size, fs::metadata(&path).unwrap().len());
    assert_eq!(summary.sha256, cygvm::fsutil::sha256_file(&path).unwrap());
    assert_eq!(summary.members.len(), 11);
    assert!(
        summary.size < data.len() as u64 * 3 / 4,
        "compressed to {}",
        summary.size
    );

    verify(&path, &summary).unwrap();
    let mut back = Vec::new();
    assert_eq!(
        restore(&path, &summary, &mut back).unwrap(),
        data.len() as u64
    );
    assert!(back == data, "restored stream differs");

    let status = Command::new("gzip").arg("-t").arg(&path).status().unwrap();
    assert!(status.success(), "gzip -t rejected state.gz");
    let out = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout == data,
        "gzip -dc output differs from the stream"
    );
}

#[test]
fn gzip_output_is_read_back_by_real_gzip_at_every_member_size() {
    let data = synthetic::stream(3 * MIB + 7, 2);
    let dir = tempfile::tempdir().unwrap();
    for (i, member_size) in [1usize, 4096, 100_000, 4 * MIB].into_iter().enumerate() {
        let data = if member_size == 1 {
            &data[..5000]
        } else {
            &data[..]
        };
        let path = dir.path().join(format!("s{i}.gz"));
        let o = CodecOptions {
            member_size,
            level: 6,
            threads: 3,
        };
        let summary = save(&path, data, o);
        let out = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
        assert!(out.stdout == data, "member size {member_size}");
        verify(&path, &summary).unwrap();
    }
}

fn damaged_copy(dir: &Path, data: &[u8]) -> (std::path::PathBuf, StateSummary) {
    let path = dir.join("state.gz");
    let summary = save(&path, data, opts());
    (path, summary)
}

#[test]
fn flipped_byte_is_named_by_member() {
    let data = synthetic::stream(8 * MIB, 3);
    let dir = tempfile::tempdir().unwrap();
    let (path, summary) = damaged_copy(dir.path(), &data);
    let mut bytes = fs::read(&path).unwrap();
    let target = 4;
    let m = summary.members[target];
    let at = (m.offset + m.compressed_len / 2) as usize;
    bytes[at] ^= 0x10;
    fs::write(&path, &bytes).unwrap();

    let err = verify(&path, &summary).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, VerifyError::Member { index, offset, .. } if index == target && offset == m.offset),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("member {target} at offset {}", m.offset)),
        "{msg}"
    );
    assert!(
        msg.contains("cygvm refresh") && msg.contains("cygvm run --cold"),
        "{msg}"
    );

    // Without verify, the streaming reader still refuses it at that member.
    let mut out = Vec::new();
    let err = restore(&path, &summary, &mut out).unwrap_err();
    assert!(
        matches!(err, RestoreError::Damaged(VerifyError::Member { index, .. }) if index == target),
        "{err}"
    );
    assert!(
        out.len() <= target * MIB,
        "damaged data must not be passed on"
    );
}

#[test]
fn flipped_trailer_byte_is_caught_against_the_index() {
    let data = synthetic::stream(3 * MIB, 4);
    let dir = tempfile::tempdir().unwrap();
    let (path, summary) = damaged_copy(dir.path(), &data);
    let mut bytes = fs::read(&path).unwrap();
    let m = summary.members[1];
    bytes[(m.offset + m.compressed_len - 8) as usize] ^= 1; // CRC-32
    fs::write(&path, &bytes).unwrap();
    let msg = verify(&path, &summary).unwrap_err().to_string();
    assert!(msg.contains("member 1") && msg.contains("CRC-32"), "{msg}");
}

#[test]
fn truncated_file_is_refused_by_verify_and_reader() {
    let data = synthetic::stream(5 * MIB, 5);
    let dir = tempfile::tempdir().unwrap();
    let (path, summary) = damaged_copy(dir.path(), &data);
    let m = summary.members[3];
    let cut = m.offset + 100;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let err = verify(&path, &summary).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VerifyError::Size { .. }), "{msg}");
    assert!(
        msg.contains("truncated") && msg.contains("member 3"),
        "{msg}"
    );
    assert!(msg.contains("cygvm refresh"), "{msg}");
    let err = restore(&path, &summary, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn wrong_sha256_in_manifest_is_refused() {
    let data = synthetic::stream(2 * MIB, 6);
    let dir = tempfile::tempdir().unwrap();
    let (path, mut summary) = damaged_copy(dir.path(), &data);
    summary.sha256 = "0".repeat(64);
    let err = verify(&path, &summary).unwrap_err();
    assert!(matches!(err, VerifyError::Sha256 { .. }), "{err}");
    assert!(err.to_string().contains(&"0".repeat(64)), "{err}");
}

#[test]
fn inconsistent_index_is_refused() {
    let data = synthetic::stream(2 * MIB, 7);
    let dir = tempfile::tempdir().unwrap();
    let (path, mut summary) = damaged_copy(dir.path(), &data);
    summary.members[1].offset += 1;
    let err = verify(&path, &summary).unwrap_err();
    assert!(matches!(err, VerifyError::Index { .. }), "{err}");
}

#[test]
fn interrupted_save_leaves_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.gz");
    let old = synthetic::stream(MIB, 8);
    let old_summary = save(&path, &old, opts());
    let old_bytes = fs::read(&path).unwrap();

    // Written completely but never committed.
    let pending = MigrationWriter::create(&path, opts())
        .unwrap()
        .save(&synthetic::stream(3 * MIB, 9)[..])
        .unwrap();
    drop(pending);
    // Failing halfway through the stream.
    struct Broken(usize);
    impl std::io::Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("QEMU went away"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }
    let err = MigrationWriter::create(&path, opts())
        .unwrap()
        .save(Broken(2 * MIB + 5))
        .err()
        .unwrap();
    assert!(err.to_string().contains("QEMU went away"), "{err}");

    assert_eq!(fs::read(&path).unwrap(), old_bytes);
    verify(&path, &old_summary).unwrap();
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("state.gz")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_save_and_restore_over_unix_sockets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    let data = synthetic::stream(12 * MIB + 999, 10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.gz");

    // QEMU's side: write the stream into the socket in odd-sized pieces.
    let (mut qemu, ours) = UnixStream::pair().unwrap();
    let sent = data.clone();
    let qemu_task = tokio::spawn(async move {
        for piece in sent.chunks(65_537) {
            qemu.write_all(piece).await.unwrap();
        }
        qemu.shutdown().await.unwrap();
    });
    let writer = MigrationWriter::create(&path, opts()).unwrap();
    let summary = writer.save_async(ours).await.unwrap().commit().unwrap();
    qemu_task.await.unwrap();
    assert_eq!(summary.stream_sha256, sha256_hex(&data));
    verify(&path, &summary).unwrap();

    // And back: QEMU reads the stream from the socket.
    let (mut qemu, mut ours) = UnixStream::pair().unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        qemu.read_to_end(&mut got).await.unwrap();
        got
    });
    let n = restore_async(&path, &summary, &mut ours, &opts())
        .await
        .unwrap();
    ours.shutdown().await.unwrap();
    drop(ours);
    assert_eq!(n, data.len() as u64);
    assert!(reader.await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_restore_reports_a_closed_socket() {
    let data = synthetic::stream(6 * MIB, 11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.gz");
    let summary = save(&path, &data, opts());
    let (qemu, mut ours) = tokio::net::UnixStream::pair().unwrap();
    drop(qemu);
    let err = restore_async(&path, &summary, &mut ours, &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::Write { .. }), "{err}");
}

#[test]
fn restore_into_std_writer_reports_write_errors() {
    let data = synthetic::stream(2 * MIB, 12);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.gz");
    let summary = save(&path, &data, opts());
    let mut child = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    child.wait().unwrap();
    let err = restore(&path, &summary, &mut stdin).unwrap_err();
    assert!(matches!(err, RestoreError::Write { .. }), "{err}");
    let _ = stdin.flush();
}

mod manifest {
    use super::*;
    use cygvm::snapshot::manifest::{DiskEntry, FORMAT_VERSION, rfc3339_utc};
    use cygvm::snapshot::{CompatError, Manifest, ManifestError, RuntimeIdentity};

    fn argv() -> Vec<String> {
        [
            "-machine",
            "pc-q35-10.0,accel=tcg",
            "-m",
            "4096",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:01:01",
        ]
        .map(String::from)
        .to_vec()
    }

    fn sample(dir: &Path) -> Manifest {
        let path = dir.join("state.gz");
        let state = save(&path, &synthetic::stream(MIB + 3, 20), opts());
        Manifest {
            format_version: FORMAT_VERSION,
            cygvm_version: env!("CARGO_PKG_VERSION").into(),
            qemu_version: "10.0.2".into(),
            machine: "pc-q35-10.0".into(),
            device_argv: argv(),
            memory_bytes: 4 << 30,
            disk: DiskEntry {
                size: 123_456,
                virtual_size: 40 << 30,
                sha256: "ab".repeat(32),
            },
            state: Some(state),
            config_fingerprint: "cd".repeat(32),
            cygwin_packages: vec!["cygport".into(), "gcc-core".into(), "make".into()],
            created: rfc3339_utc(std::time::SystemTime::now()),
        }
    }

    fn identity() -> RuntimeIdentity {
        RuntimeIdentity {
            qemu_version: "10.0.2".into(),
            machine: "pc-q35-10.0".into(),
            device_argv: argv(),
        }
    }

    #[test]
    fn round_trip_and_state_verifies_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample(dir.path());
        let path = dir.path().join("manifest.json");
        m.save(&path).unwrap();
        let back = Manifest::load(&path).unwrap();
        assert_eq!(back, m);
        assert!(
            back.created.ends_with('Z') && back.created.len() == 20,
            "{}",
            back.created
        );
        verify(&dir.path().join("state.gz"), back.state.as_ref().unwrap()).unwrap();
        back.check_compatible(&identity()).unwrap();
    }

    #[test]
    fn newer_format_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let mut value = serde_json::to_value(sample(dir.path())).unwrap();
        value["format_version"] = serde_json::json!(FORMAT_VERSION + 1);
        value["something_new"] = serde_json::json!(true);
        fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        let err = Manifest::load(&path).unwrap_err();
        assert!(matches!(err, ManifestError::NewerFormat { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("format version {}", FORMAT_VERSION + 1)),
            "{msg}"
        );
        assert!(msg.contains("newer cygvm"), "{msg}");
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        fs::write(&path, b"{\"format_version\": 1}").unwrap();
        assert!(matches!(
            Manifest::load(&path),
            Err(ManifestError::Invalid { .. })
        ));
        fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            Manifest::load(&path),
            Err(ManifestError::Invalid { .. })
        ));
    }

    #[test]
    fn compatibility_mismatches_name_the_difference() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample(dir.path());
        m.qemu_version = "9.2.0".into();
        let err = m.check_compatible(&identity()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CompatError::QemuVersion { .. }));
        assert!(
            msg.starts_with("snapshot made by QEMU 9.2.0, this host runs 10.0.2"),
            "{msg}"
        );
        assert!(
            msg.contains("cygvm refresh") && msg.contains("cygvm run --cold"),
            "{msg}"
        );

        let mut m = sample(dir.path());
        m.machine = "pc-q35-9.2".into();
        let msg = m.check_compatible(&identity()).unwrap_err().to_string();
        assert!(
            msg.contains("machine type pc-q35-9.2, this run uses pc-q35-10.0"),
            "{msg}"
        );

        let m = sample(dir.path());
        let mut other = identity();
        other.device_argv[5] = "e1000,netdev=n0,mac=52:54:00:12:01:01".into();
        let msg = m.check_compatible(&other).unwrap_err().to_string();
        assert!(
            msg.starts_with(
                "device set differs: snapshot has `virtio-net-pci,netdev=n0,mac=52:54:00:12:01:01` (argument 6), \
                 this run has `e1000,netdev=n0,mac=52:54:00:12:01:01` (argument 6)"
            ),
            "{msg}"
        );
    }
}
