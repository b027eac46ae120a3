//! Saving: QEMU's migration stream in, `state.gz` out.
//!
//! The stream is cut into members of [`CodecOptions::member_size`] bytes,
//! compressed on [`CodecOptions::threads`] threads and written in order to a
//! temporary file beside the destination. Nothing appears under the real
//! name until [`PendingState::commit`].

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::member;
use super::pool::OrderedPool;
use super::{CodecOptions, MemberEntry, StateSummary};
use crate::fsutil::AtomicFile;

/// The largest member the format allows: ISIZE and the `CV` length are 32-bit.
const MAX_MEMBER_SIZE: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("cannot create a temporary file beside {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("reading the migration stream failed: {source}")]
    Read { source: io::Error },
    #[error("the migration stream was abandoned before its end; nothing was saved")]
    Abandoned,
    #[error("writing {path} failed: {source}{hint}", hint = space_hint(source))]
    Write { path: PathBuf, source: io::Error },
    #[error("saving {path} failed at fsync/rename: {source}{hint}", hint = space_hint(source))]
    Commit { path: PathBuf, source: io::Error },
    #[error("invalid snapshot codec options: {0}")]
    Options(String),
    #[error("a compression thread failed while saving {path}; nothing was saved")]
    Internal { path: PathBuf },
}

fn space_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC) {
        " (the disk is full: free space there or point `image.dir` elsewhere, then save again)"
    } else {
        ""
    }
}

/// Writes one `state.gz`.
pub struct MigrationWriter {
    dest: PathBuf,
    file: AtomicFile,
    opts: CodecOptions,
}

/// A fully written, not yet published `state.gz`. Dropping it removes the
/// temporary file; the destination is left as it was.
pub struct PendingState {
    dest: PathBuf,
    file: AtomicFile,
    summary: StateSummary,
}

impl MigrationWriter {
    /// Opens a temporary file beside `dest`.
    pub fn create(dest: &Path, opts: CodecOptions) -> Result<Self, SaveError> {
        if opts.member_size == 0 || opts.member_size > MAX_MEMBER_SIZE {
            return Err(SaveError::Options(format!(
                "member size {} is outside 1..={MAX_MEMBER_SIZE}",
                opts.member_size
            )));
        }
        if !(0..=12).contains(&opts.level) {
            return Err(SaveError::Options(format!(
                "level {} is outside 0..=12",
                opts.level
            )));
        }
        let file = AtomicFile::create(dest).map_err(|source| SaveError::Create {
            path: dest.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dest: dest.to_path_buf(),
            file,
            opts,
        })
    }

    /// Consumes `input` to its end.
    pub fn save<R: Read>(self, mut input: R) -> Result<PendingState, SaveError> {
        let size = self.opts.member_size;
        self.save_chunks(move || {
            let mut buf = vec![0u8; size];
            let n = read_full(&mut input, &mut buf).map_err(|source| SaveError::Read { source })?;
            buf.truncate(n);
            Ok((n > 0).then_some(buf))
        })
    }

    /// Consumes `input` to its end — in production the unix socket QEMU
    /// migrates into. Compression runs on blocking threads; this future only
    /// moves bytes. Dropping it abandons the save and leaves nothing behind.
    pub async fn save_async<R: AsyncRead + Unpin>(
        self,
        mut input: R,
    ) -> Result<PendingState, SaveError> {
        let size = self.opts.member_size;
        // `Ok(None)` marks the real end of the stream, so a dropped sender
        // is never mistaken for it.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Option<Vec<u8>>>>(2);
        let path = self.dest.clone();
        let saver = tokio::task::spawn_blocking(move || {
            self.save_chunks(move || match rx.blocking_recv() {
                Some(Ok(chunk)) => Ok(chunk),
                Some(Err(source)) => Err(SaveError::Read { source }),
                None => Err(SaveError::Abandoned),
            })
        });
        loop {
            let mut buf = vec![0u8; size];
            let msg = match read_full_async(&mut input, &mut buf).await {
                Ok(0) => Ok(None),
                Ok(n) => {
                    buf.truncate(n);
                    Ok(Some(buf))
                }
                Err(e) => Err(e),
            };
            let last = !matches!(msg, Ok(Some(_)));
            // The saver stopped early; its own error says why.
            if tx.send(msg).await.is_err() || last {
                break;
            }
        }
        drop(tx);
        saver.await.map_err(|_| SaveError::Internal { path })?
    }

    fn save_chunks(
        mut self,
        mut next_chunk: impl FnMut() -> Result<Option<Vec<u8>>, SaveError>,
    ) -> Result<PendingState, SaveError> {
        let level = self.opts.level;
        let mut pool = OrderedPool::new(
            self.opts.threads,
            self.opts.in_flight(),
            move || member::compressor(level),
            move |c, chunk: Vec<u8>| (chunk.len() as u64, member::encode(c, level, &chunk)),
        );
        let dest = self.dest.clone();
        let mut out = MemberSink::new(self.file.file());
        let put =
            |out: &mut MemberSink<&mut std::fs::File>,
             done: Result<(u64, Vec<u8>), super::pool::WorkerPanicked>| match done {
                Ok((len, bytes)) => out.put(len, &bytes).map_err(|source| SaveError::Write {
                    path: dest.clone(),
                    source,
                }),
                Err(_) => Err(SaveError::Internal { path: dest.clone() }),
            };
        let mut stream_hash = Sha256::new();
        let mut stream_len = 0u64;
        while let Some(chunk) = next_chunk()? {
            stream_hash.update(&chunk);
            stream_len += chunk.len() as u64;
            while pool.is_full() {
                let done = pool.next().expect("a full pool has work in flight");
                put(&mut out, done)?;
            }
            pool.submit(chunk);
        }
        while let Some(done) = pool.next() {
            put(&mut out, done)?;
        }
        drop(pool);
        if out.members.is_empty() {
            // An empty stream is still a valid gzip file: one empty member.
            let empty = member::encode(&mut member::compressor(level), level, b"");
            put(&mut out, Ok((0, empty)))?;
        }
        let MemberSink {
            offset,
            hash,
            members,
            ..
        } = out;
        let summary = StateSummary {
            size: offset,
            sha256: hex::encode(hash.finalize()),
            stream_len,
            stream_sha256: hex::encode(stream_hash.finalize()),
            members,
        };
        Ok(PendingState {
            dest: self.dest,
            file: self.file,
            summary,
        })
    }
}

impl PendingState {
    pub fn summary(&self) -> &StateSummary {
        &self.summary
    }

    /// Flushes, fsyncs and renames the file into place.
    pub fn commit(self) -> Result<StateSummary, SaveError> {
        self.file.commit().map_err(|source| SaveError::Commit {
            path: self.dest.clone(),
            source,
        })?;
        Ok(self.summary)
    }
}

/// Appends members in order, recording the index and hashing the file.
struct MemberSink<W> {
    out: W,
    offset: u64,
    hash: Sha256,
    members: Vec<MemberEntry>,
}

impl<W: Write> MemberSink<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            hash: Sha256::new(),
            members: Vec::new(),
        }
    }

    fn put(&mut self, uncompressed_len: u64, bytes: &[u8]) -> io::Result<()> {
        let frame = member::parse_frame(bytes).map_err(io::Error::other)?;
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        self.members.push(MemberEntry {
            offset: self.offset,
            compressed_len: bytes.len() as u64,
            uncompressed_len,
            crc32: frame.crc32,
        });
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// Fills `buf` unless the input ends first; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

async fn read_full_async(
    input: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FullDisk;
    impl Write for FullDisk {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn disk_full_names_the_path_and_what_to_do() {
        let mut sink = MemberSink::new(FullDisk);
        let bytes = member::encode(&mut member::compressor(1), 1, b"abc");
        let source = sink.put(3, &bytes).unwrap_err();
        let err = SaveError::Write {
            path: PathBuf::from("/images/win11/gen-0002/state.gz"),
            source,
        };
        let msg = err.to_string();
        assert!(msg.contains("/images/win11/gen-0002/state.gz"), "{msg}");
        assert!(msg.contains("disk is full"), "{msg}");
    }

    #[test]
    fn bad_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CodecOptions {
            member_size: 0,
            ..CodecOptions::default()
        };
        assert!(matches!(
            MigrationWriter::create(&dir.path().join("state.gz"), opts),
            Err(SaveError::Options(_))
        ));
    }

    #[test]
    fn empty_stream_is_one_empty_member() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("state.gz");
        let w = MigrationWriter::create(&dest, CodecOptions::default()).unwrap();
        let summary = w.save(io::empty()).unwrap().commit().unwrap();
        assert_eq!(summary.stream_len, 0);
        assert_eq!(summary.members.len(), 1);
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), summary.size);
    }
}
