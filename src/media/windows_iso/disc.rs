//! What both file systems hand back: where a file's bytes lie on the disc,
//! and a reader over those places that reads only what is asked for.

use std::io::{self, Read, Seek, SeekFrom};

/// A run of a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes at byte `offset` of the disc.
    Disc { offset: u64, len: u64 },
    /// An extent allocated but not recorded (ECMA-167 4/14.14.1.1 types 1
    /// and 2): it reads as zeros.
    Zeros { len: u64 },
    /// Bytes held in the file's own descriptor (a UDF file entry with
    /// embedded data).
    Bytes(Vec<u8>),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Disc { len, .. } | Piece::Zeros { len } => *len,
            Piece::Bytes(b) => b.len() as u64,
        }
    }
}

/// A file or directory found on a disc.
#[derive(Debug, Clone)]
pub struct Node {
    pub is_dir: bool,
    pub pieces: Vec<Piece>,
}

impl Node {
    pub fn size(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum()
    }
}

/// Cuts `pieces` to the first `size` bytes (UDF extents are whole blocks;
/// the file's length is its information length).
pub fn truncate(pieces: &mut Vec<Piece>, size: u64) {
    let mut left = size;
    let mut keep = 0;
    for p in pieces.iter_mut() {
        if left == 0 {
            break;
        }
        let take = p.len().min(left);
        match p {
            Piece::Disc { len, .. } | Piece::Zeros { len } => *len = take,
            Piece::Bytes(b) => b.truncate(take as usize),
        }
        left -= take;
        keep += 1;
    }
    pieces.truncate(keep);
}

/// Reads a file's bytes from the disc, seeking to each piece as needed.
pub struct FileReader<'a, R> {
    disc: &'a mut R,
    pieces: &'a [Piece],
    size: u64,
    pos: u64,
}

impl<'a, R: Read + Seek> FileReader<'a, R> {
    pub fn new(disc: &'a mut R, node: &'a Node) -> Self {
        Self {
            disc,
            pieces: &node.pieces,
            size: node.size(),
            pos: 0,
        }
    }
}

impl<R: Read + Seek> Read for FileReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut start = 0;
        for p in self.pieces {
            let len = p.len();
            if self.pos < start + len {
                let within = self.pos - start;
                let n = (len - within).min(buf.len() as u64) as usize;
                match p {
                    Piece::Disc { offset, .. } => {
                        self.disc.seek(SeekFrom::Start(offset + within))?;
                        self.disc.read_exact(&mut buf[..n])?;
                    }
                    Piece::Zeros { .. } => buf[..n].fill(0),
                    Piece::Bytes(b) => {
                        buf[..n].copy_from_slice(&b[within as usize..within as usize + n])
                    }
                }
                self.pos += n as u64;
                return Ok(n);
            }
            start += len;
        }
        Ok(0)
    }
}

impl<R: Read + Seek> Seek for FileReader<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

/// Reads `len` bytes at byte `offset` of the disc.
pub fn read_at<R: Read + Seek>(disc: &mut R, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    disc.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    disc.read_exact(&mut buf)?;
    Ok(buf)
}

/// Reads a whole (small) file, such as a directory, into memory.
pub fn read_all<R: Read + Seek>(disc: &mut R, node: &Node) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(node.size() as usize);
    FileReader::new(disc, node).read_to_end(&mut out)?;
    Ok(out)
}

/// Case-insensitive name comparison, as Windows compares file names.
pub fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}
