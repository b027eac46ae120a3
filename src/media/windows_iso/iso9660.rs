//! Just enough ECMA-119 (ISO 9660) and Joliet to find a file by path.
//!
//! - Volume descriptors start at logical sector 16 (ECMA-119 6.2.1, 8.1):
//!   type 1 is the primary descriptor, type 2 a supplementary one (a Joliet
//!   one when its escape sequences at byte 88 are `%/@`, `%/C` or `%/E`),
//!   type 255 ends the set. Each holds the root directory record at byte 156
//!   (8.4.18, 8.5).
//! - Directory records (9.1): length, extent location (both-endian, LE half
//!   at byte 2), data length (LE at 10), flags at 25 (bit 1 directory, bit 7
//!   "multi-extent": more records of the same file follow, 9.1.6), name length
//!   at 32 and name at 33. Records never cross a sector; a zero length byte
//!   means the rest of the sector is unused (6.8.1.1).
//! - Primary names carry a `;1` version and may end in `.`; Joliet names are
//!   UCS-2 big-endian.

use std::io::{Read, Seek};

use super::FsError;
use super::disc::{Node, Piece, read_all, read_at, same_name};

const SECTOR: u64 = 2048;
const FIRST_DESCRIPTOR: u64 = 16;
/// Real discs have a handful of descriptors; more means a damaged set.
const MAX_DESCRIPTORS: u64 = 64;

pub struct Volume {
    root: Node,
    joliet: bool,
}

impl Volume {
    /// Reads the volume descriptors; `None` if the disc has no ISO 9660
    /// volume. Prefers the Joliet tree (the names Windows sees).
    pub fn open<R: Read + Seek>(disc: &mut R) -> Result<Option<Self>, FsError> {
        let mut primary = None;
        let mut joliet = None;
        for n in 0..MAX_DESCRIPTORS {
            let Ok(d) = read_at(disc, (FIRST_DESCRIPTOR + n) * SECTOR, SECTOR as usize) else {
                break;
            };
            if &d[1..6] != b"CD001" {
                break;
            }
            match d[0] {
                1 if primary.is_none() => primary = Some(record_node(&d[156..190])?),
                2 if d[88] == 0x25 && d[89] == 0x2f && matches!(d[90], 0x40 | 0x43 | 0x45) => {
                    joliet = Some(record_node(&d[156..190])?)
                }
                255 => break,
                _ => {}
            }
        }
        Ok(match (joliet, primary) {
            (Some(root), _) => Some(Self { root, joliet: true }),
            (None, Some(root)) => Some(Self {
                root,
                joliet: false,
            }),
            (None, None) => None,
        })
    }

    /// Finds `path` (components compared case-insensitively).
    pub fn lookup<R: Read + Seek>(
        &self,
        disc: &mut R,
        path: &[&str],
    ) -> Result<Option<Node>, FsError> {
        let mut node = self.root.clone();
        for want in path {
            if !node.is_dir {
                return Ok(None);
            }
            match self.find_in(disc, &node, want)? {
                Some(n) => node = n,
                None => return Ok(None),
            }
        }
        Ok(Some(node))
    }

    fn find_in<R: Read + Seek>(
        &self,
        disc: &mut R,
        dir: &Node,
        want: &str,
    ) -> Result<Option<Node>, FsError> {
        if dir.size() > 64 << 20 {
            return Err(FsError::Damaged(format!(
                "a directory of {} bytes",
                dir.size()
            )));
        }
        let data = read_all(disc, dir)?;
        let mut pos = 0usize;
        let mut found: Option<Node> = None;
        while pos < data.len() {
            let len = data[pos] as usize;
            if len == 0 {
                pos = (pos / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            if len < 34 || pos + len > data.len() {
                return Err(FsError::Damaged(format!(
                    "a directory record of {len} bytes at offset {pos} of a directory"
                )));
            }
            let rec = &data[pos..pos + len];
            pos += len;
            let name_len = rec[32] as usize;
            if 33 + name_len > len {
                return Err(FsError::Damaged(
                    "a name longer than its directory record".into(),
                ));
            }
            let raw = &rec[33..33 + name_len];
            if raw == [0] || raw == [1] {
                continue; // "." and ".."
            }
            let name = self.decode_name(raw);
            let more = rec[25] & 0x80 != 0;
            if let Some(f) = &mut found {
                // The next extent of a multi-extent file.
                f.pieces.extend(record_node(rec)?.pieces);
                if !more {
                    return Ok(found);
                }
                continue;
            }
            if same_name(&name, want) {
                let node = record_node(rec)?;
                if !more {
                    return Ok(Some(node));
                }
                found = Some(node);
            }
        }
        Ok(found)
    }

    fn decode_name(&self, raw: &[u8]) -> String {
        let name = if self.joliet {
            let units = raw
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .map(|c| c.unwrap_or('\u{fffd}'))
                .collect()
        } else {
            String::from_utf8_lossy(raw).into_owned()
        };
        let name = match name.rfind(';') {
            Some(i) => &name[..i],
            None => &name,
        };
        name.strip_suffix('.').unwrap_or(name).to_string()
    }
}

/// The node a directory record describes.
fn record_node(rec: &[u8]) -> Result<Node, FsError> {
    if rec.len() < 34 {
        return Err(FsError::Damaged("a short directory record".into()));
    }
    let lba = u32::from_le_bytes(rec[2..6].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(rec[10..14].try_into().expect("4 bytes"));
    Ok(Node {
        is_dir: rec[25] & 0x02 != 0,
        pieces: vec![Piece::Disc {
            offset: u64::from(lba) * SECTOR,
            len: u64::from(len),
        }],
    })
}
