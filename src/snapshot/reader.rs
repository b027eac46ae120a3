//! Reviving: check `state.gz` against the manifest, then feed the migration
//! stream back to QEMU, decompressing members on all cores.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use libdeflater::Decompressor;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::member::{self, DecodeError};
use super::pool::OrderedPool;
use super::{CodecOptions, MemberEntry, STATE_HINT, StateSummary};

/// `state.gz` does not match its manifest. Every variant names the file and
/// ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}; {STATE_HINT}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is {actual} bytes, the manifest records {expected}{detail}; {STATE_HINT}")]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
        detail: String,
    },
    #[error("{path} is damaged: member {index} at offset {offset}: {problem}; {STATE_HINT}")]
    Member {
        path: PathBuf,
        index: usize,
        offset: u64,
        problem: String,
    },
    #[error("{path} has sha256 {actual}, the manifest records {expected}; {STATE_HINT}")]
    Sha256 {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("the manifest's member index for {path} is inconsistent: {problem}; {STATE_HINT}")]
    Index { path: PathBuf, problem: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Damaged(#[from] VerifyError),
    #[error("writing the migration stream to QEMU failed: {source}")]
    Write { source: io::Error },
    #[error("a decompression thread failed while reading {path}")]
    Internal { path: PathBuf },
}

/// Checks `state.gz` against the manifest's summary before any guest starts:
/// size, every member's header and trailer against the index, and the
/// sha256 of the whole file. A damaged file is then decompressed to name the
/// damaged member.
pub fn verify(path: &Path, expected: &StateSummary) -> Result<(), VerifyError> {
    verify_with(path, expected, &CodecOptions::default())
}

pub fn verify_with(
    path: &Path,
    expected: &StateSummary,
    opts: &CodecOptions,
) -> Result<(), VerifyError> {
    check_index(path, expected)?;
    let file = open_checked(path, expected)?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut hash = Sha256::new();
    let mut buf = Vec::new();
    for (index, entry) in expected.members.iter().enumerate() {
        read_member(path, &mut input, index, entry, &mut buf)?;
        hash.update(&buf);
        check_frame(path, index, entry, &buf)?;
    }
    let actual = hex::encode(hash.finalize());
    if actual != expected.sha256 {
        // Name the member if one is damaged; else the manifest is what is wrong.
        let decode_all = restore_with(path, expected, &mut io::sink(), opts);
        if let Err(RestoreError::Damaged(e)) = decode_all {
            return Err(e);
        }
        return Err(VerifyError::Sha256 {
            path: path.to_path_buf(),
            expected: expected.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// Decompresses `state.gz` into `out`, checking each member's CRC-32 and
/// length; returns the stream length. Stops at the first damaged member.
pub fn restore<W: Write>(
    path: &Path,
    expected: &StateSummary,
    out: &mut W,
) -> Result<u64, RestoreError> {
    restore_with(path, expected, out, &CodecOptions::default())
}

pub fn restore_with<W: Write>(
    path: &Path,
    expected: &StateSummary,
    out: &mut W,
    opts: &CodecOptions,
) -> Result<u64, RestoreError> {
    decode_members(path, expected, opts, |chunk| {
        out.write_all(&chunk)
            .map_err(|source| RestoreError::Write { source })
    })?;
    out.flush()
        .map_err(|source| RestoreError::Write { source })?;
    Ok(expected.stream_len)
}

/// [`restore`] into an async writer — in production the unix socket QEMU
/// reads with `migrate-incoming`. Decompression runs on blocking threads.
pub async fn restore_async<W: AsyncWrite + Unpin>(
    path: &Path,
    expected: &StateSummary,
    out: &mut W,
    opts: &CodecOptions,
) -> Result<u64, RestoreError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let (path_buf, summary, opts) = (path.to_path_buf(), expected.clone(), *opts);
    let decoder = tokio::task::spawn_blocking(move || {
        decode_members(&path_buf, &summary, &opts, |chunk| {
            // A closed channel means the writer below failed; it reports why.
            tx.blocking_send(chunk).map_err(|_| RestoreError::Write {
                source: io::Error::from(io::ErrorKind::BrokenPipe),
            })
        })
    });
    let mut write_err = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(source) = out.write_all(&chunk).await {
            write_err = Some(RestoreError::Write { source });
            break;
        }
    }
    drop(rx);
    let decoded = decoder.await.map_err(|_| RestoreError::Internal {
        path: path.to_path_buf(),
    })?;
    if let Some(e) = write_err {
        return Err(e);
    }
    decoded?;
    out.flush()
        .await
        .map_err(|source| RestoreError::Write { source })?;
    Ok(expected.stream_len)
}

fn decode_members(
    path: &Path,
    expected: &StateSummary,
    opts: &CodecOptions,
    mut sink: impl FnMut(Vec<u8>) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    check_index(path, expected)?;
    let file = open_checked(path, expected)?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut pool = OrderedPool::new(
        opts.threads,
        opts.in_flight(),
        Decompressor::new,
        |d, (entry, bytes): (MemberEntry, Vec<u8>)| {
            member::decode(d, &bytes, entry.uncompressed_len)
        },
    );
    let members = &expected.members;
    let mut delivered = 0usize;
    let mut take =
        |pool: &mut OrderedPool<_, _>, delivered: &mut usize| -> Result<(), RestoreError> {
            let index = *delivered;
            match pool.next().expect("called with work in flight") {
                Ok(Ok(chunk)) => {
                    *delivered += 1;
                    sink(chunk)
                }
                Ok(Err(e)) => Err(member_error(path, index, &members[index], &e).into()),
                Err(_) => Err(RestoreError::Internal {
                    path: path.to_path_buf(),
                }),
            }
        };
    for (index, entry) in members.iter().enumerate() {
        while pool.is_full() {
            take(&mut pool, &mut delivered)?;
        }
        let mut buf = Vec::new();
        read_member(path, &mut input, index, entry, &mut buf)?;
        pool.submit((*entry, buf));
    }
    while pool.in_flight() > 0 {
        take(&mut pool, &mut delivered)?;
    }
    Ok(())
}

/// The index must tile the file and add up to the stream.
fn check_index(path: &Path, s: &StateSummary) -> Result<(), VerifyError> {
    let bad = |problem: String| VerifyError::Index {
        path: path.to_path_buf(),
        problem,
    };
    if s.members.is_empty() {
        return Err(bad("it lists no members".into()));
    }
    let mut offset = 0u64;
    let mut stream = 0u64;
    for (i, m) in s.members.iter().enumerate() {
        if m.offset != offset {
            return Err(bad(format!(
                "member {i} starts at {}, expected {offset}",
                m.offset
            )));
        }
        if m.compressed_len < (member::HEADER_LEN + member::TRAILER_LEN) as u64
            || m.compressed_len > u32::MAX as u64
        {
            return Err(bad(format!(
                "member {i} has impossible length {}",
                m.compressed_len
            )));
        }
        offset += m.compressed_len;
        stream += m.uncompressed_len;
    }
    if offset != s.size {
        return Err(bad(format!(
            "members end at {offset}, the file size is {}",
            s.size
        )));
    }
    if stream != s.stream_len {
        return Err(bad(format!(
            "members hold {stream} bytes, the stream is {}",
            s.stream_len
        )));
    }
    Ok(())
}

fn open_checked(path: &Path, expected: &StateSummary) -> Result<File, VerifyError> {
    let read_err = |source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let actual = file.metadata().map_err(read_err)?.len();
    if actual != expected.size {
        let detail = if actual < expected.size {
            let cut = expected
                .members
                .iter()
                .position(|m| m.offset + m.compressed_len > actual)
                .unwrap_or(0);
            format!(
                " (truncated: it ends inside member {cut} of {})",
                expected.members.len()
            )
        } else {
            " (it has data after the last member)".to_string()
        };
        return Err(VerifyError::Size {
            path: path.to_path_buf(),
            expected: expected.size,
            actual,
            detail,
        });
    }
    Ok(file)
}

fn read_member(
    path: &Path,
    input: &mut impl Read,
    index: usize,
    entry: &MemberEntry,
    buf: &mut Vec<u8>,
) -> Result<(), VerifyError> {
    buf.resize(entry.compressed_len as usize, 0);
    input.read_exact(buf).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            member_problem(
                path,
                index,
                entry,
                "the file ends inside it (truncated)".into(),
            )
        } else {
            VerifyError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Header and trailer of a member against its index entry.
fn check_frame(
    path: &Path,
    index: usize,
    entry: &MemberEntry,
    bytes: &[u8],
) -> Result<(), VerifyError> {
    let problem = |p: String| member_problem(path, index, entry, p);
    let frame = member::parse_frame(bytes).map_err(|e| problem(e.to_string()))?;
    if u64::from(frame.member_len) != entry.compressed_len {
        return Err(problem(format!(
            "its header says {} bytes long, the index says {}",
            frame.member_len, entry.compressed_len
        )));
    }
    if frame.crc32 != entry.crc32 {
        return Err(problem(format!(
            "its trailer has CRC-32 {:08x}, the index says {:08x}",
            frame.crc32, entry.crc32
        )));
    }
    if u64::from(frame.isize) != entry.uncompressed_len & 0xffff_ffff {
        return Err(problem(format!(
            "its trailer says it holds {} bytes, the index says {}",
            frame.isize, entry.uncompressed_len
        )));
    }
    Ok(())
}

fn member_error(path: &Path, index: usize, entry: &MemberEntry, e: &DecodeError) -> VerifyError {
    member_problem(path, index, entry, e.to_string())
}

fn member_problem(path: &Path, index: usize, entry: &MemberEntry, problem: String) -> VerifyError {
    VerifyError::Member {
        path: path.to_path_buf(),
        index,
        offset: entry.offset,
        problem,
    }
}
