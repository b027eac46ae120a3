//! Just enough UDF (OSTA UDF 1.02–2.60 on ECMA-167 3rd edition) to find a
//! file by path and say where its bytes lie; what Microsoft's oscdimg writes
//! on Windows ISOs, alone or as a UDF bridge next to ISO 9660.
//!
//! - Descriptor tags (ECMA-167 3/7.2): identifier, checksum of the 16 tag
//!   bytes; the sector size is 2048 (UDF 2.2.4 for DVD media).
//! - Anchor Volume Descriptor Pointer (3/10.2) at sector 256, else N-256 or
//!   N-1 (UDF 2.2.3): the main Volume Descriptor Sequence extent at byte 16.
//! - In that sequence: Partition Descriptors (3/10.5: number at 22, start at
//!   188), the Logical Volume Descriptor (3/10.6: block size at 212, File Set
//!   Descriptor `long_ad` at 248, partition maps at 440), a Terminating
//!   Descriptor (3/10.9).
//! - Partition maps: type 1 (3/10.7.2) names a partition by number; the type 2
//!   "*UDF Metadata Partition" map (UDF 2.50 2.2.10) places file system
//!   metadata inside a metadata file whose extents map its blocks.
//! - File Set Descriptor (4/14.1): the root directory ICB at byte 400.
//! - File Entry (4/14.9, tag 261) and Extended File Entry (4/14.17, tag 266):
//!   information length at 56, the allocation descriptors after the extended
//!   attributes; ICB flags bits 0–2 (4/14.6.8) choose `short_ad` (4/14.14.1),
//!   `long_ad` (4/14.14.2) or data embedded in the entry. Extent lengths carry
//!   the extent type in their top two bits; type 3 continues the list in an
//!   Allocation Extent Descriptor (4/14.5, tag 258).
//! - File Identifier Descriptors (4/14.4, tag 257) make up a directory; names
//!   are OSTA compressed Unicode (UDF 2.1.1): 8 = one byte per character,
//!   16 = UTF-16BE.

use std::io::{Read, Seek};

use super::FsError;
use super::disc::{Node, Piece, read_all, read_at, same_name, truncate};

const SECTOR: u64 = 2048;
const TAG_AVDP: u16 = 2;
const TAG_PARTITION: u16 = 5;
const TAG_LOGICAL_VOLUME: u16 = 6;
const TAG_TERMINATING: u16 = 8;
const TAG_FILE_SET: u16 = 256;
const TAG_FILE_ID: u16 = 257;
const TAG_ALLOCATION_EXTENT: u16 = 258;
const TAG_FILE_ENTRY: u16 = 261;
const TAG_EXTENDED_FILE_ENTRY: u16 = 266;
/// Bounds on what a sane disc holds, so a damaged one cannot loop or allocate
/// without end.
const MAX_VDS_SECTORS: u64 = 256;
const MAX_EXTENTS: usize = 1 << 16;
const MAX_DIR_BYTES: u64 = 64 << 20;

/// An ICB address: a logical block in a partition (4/7.1 `lb_addr`).
#[derive(Debug, Clone, Copy)]
struct BlockAddress {
    block: u32,
    partition: u16,
}

#[derive(Debug, Clone)]
enum PartitionMap {
    /// Blocks count from the partition's first sector.
    Physical { number: u16, start_sector: u64 },
    /// Blocks are those of the metadata file, which lies in a physical
    /// partition map: `(first block, blocks)` runs, in order.
    Metadata {
        physical: u16,
        runs: Vec<(u32, u32)>,
    },
}

pub struct Volume {
    block_size: u64,
    maps: Vec<PartitionMap>,
    root: BlockAddress,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The descriptor's tag identifier, if the tag checksum holds.
fn tag_id(b: &[u8]) -> Option<u16> {
    if b.len() < 16 {
        return None;
    }
    let sum = b[..16]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .fold(0u8, |s, (_, v)| s.wrapping_add(*v));
    (sum == b[4]).then(|| le16(b, 0))
}

fn long_ad(b: &[u8], at: usize) -> (u32, BlockAddress) {
    (
        le32(b, at),
        BlockAddress {
            block: le32(b, at + 4),
            partition: le16(b, at + 8),
        },
    )
}

impl Volume {
    /// Reads the anchor and volume descriptors; `None` if the disc has no
    /// UDF volume.
    pub fn open<R: Read + Seek>(disc: &mut R, disc_len: u64) -> Result<Option<Self>, FsError> {
        let sectors = disc_len / SECTOR;
        let mut anchor = None;
        for at in [256, sectors.saturating_sub(256), sectors.saturating_sub(1)] {
            if at < 256 || at >= sectors {
                continue;
            }
            let b = read_at(disc, at * SECTOR, SECTOR as usize)?;
            if tag_id(&b) == Some(TAG_AVDP) {
                anchor = Some(b);
                break;
            }
        }
        let Some(anchor) = anchor else {
            return Ok(None);
        };
        let vds_len = u64::from(le32(&anchor, 16)) / SECTOR;
        let vds_at = u64::from(le32(&anchor, 20));

        let mut partitions: Vec<(u16, u64)> = Vec::new();
        let mut lvd = None;
        for n in 0..vds_len.min(MAX_VDS_SECTORS) {
            let b = read_at(disc, (vds_at + n) * SECTOR, SECTOR as usize)?;
            match tag_id(&b) {
                Some(TAG_PARTITION) => partitions.push((le16(&b, 22), u64::from(le32(&b, 188)))),
                Some(TAG_LOGICAL_VOLUME) if lvd.is_none() => lvd = Some(b),
                Some(TAG_TERMINATING) | None => break,
                Some(_) => {}
            }
        }
        let lvd = lvd.ok_or_else(|| {
            FsError::Damaged("the UDF volume has no Logical Volume Descriptor".into())
        })?;
        let block_size = u64::from(le32(&lvd, 212));
        if block_size != SECTOR {
            return Err(FsError::Damaged(format!(
                "UDF logical block size {block_size}, expected {SECTOR}"
            )));
        }
        let (_, file_set) = long_ad(&lvd, 248);
        let table_len = le32(&lvd, 264) as usize;
        let map_count = le32(&lvd, 268);
        let table = lvd.get(440..440 + table_len).ok_or_else(|| {
            FsError::Damaged("the UDF partition map table overruns its descriptor".into())
        })?;

        let physical_start = |number: u16| {
            partitions
                .iter()
                .find(|(n, _)| *n == number)
                .map(|(_, start)| *start)
                .ok_or_else(|| {
                    FsError::Damaged(format!(
                        "UDF partition {number} has no Partition Descriptor"
                    ))
                })
        };
        let mut volume = Volume {
            block_size,
            maps: Vec::new(),
            root: file_set,
        };
        // Metadata maps need the physical maps first: (map index, partition, file block).
        let mut metadata_maps = Vec::new();
        let mut pos = 0;
        for _ in 0..map_count {
            let (kind, len) = match table.get(pos..pos + 2) {
                Some(h) => (h[0], h[1] as usize),
                None => break,
            };
            let map = table
                .get(pos..pos + len)
                .ok_or_else(|| FsError::Damaged("a UDF partition map overruns its table".into()))?;
            match (kind, len) {
                (1, 6) => volume.maps.push(PartitionMap::Physical {
                    number: le16(map, 4),
                    start_sector: physical_start(le16(map, 4))?,
                }),
                (2, 64) if map[5..].starts_with(b"*UDF Metadata Partition") => {
                    metadata_maps.push((volume.maps.len(), le16(map, 38), le32(map, 40)));
                    volume.maps.push(PartitionMap::Metadata {
                        physical: 0,
                        runs: Vec::new(),
                    });
                }
                _ => {
                    let id = String::from_utf8_lossy(map.get(5..28).unwrap_or_default());
                    return Err(FsError::Damaged(format!(
                        "unsupported UDF partition map (type {kind}, {:?})",
                        id.trim_end_matches('\0')
                    )));
                }
            }
            pos += len;
        }
        for (index, number, file_block) in metadata_maps {
            let physical = volume
                .maps
                .iter()
                .position(|m| matches!(m, PartitionMap::Physical { number: n, .. } if *n == number))
                .ok_or_else(|| {
                    FsError::Damaged(format!(
                        "the UDF metadata partition names partition {number}, which has no map"
                    ))
                })? as u16;
            let entry = volume.file_entry(
                disc,
                BlockAddress {
                    block: file_block,
                    partition: physical,
                },
            )?;
            let mut runs = Vec::new();
            for (len, addr) in entry.extents {
                runs.push((addr.block, len.div_ceil(block_size as u32)));
            }
            volume.maps[index] = PartitionMap::Metadata { physical, runs };
        }

        let fsd = volume.read_block(disc, file_set)?;
        if tag_id(&fsd) != Some(TAG_FILE_SET) {
            return Err(FsError::Damaged(
                "the UDF File Set Descriptor is missing or damaged".into(),
            ));
        }
        volume.root = long_ad(&fsd, 400).1;
        Ok(Some(volume))
    }

    /// Where on the disc the `bytes` bytes from block `at` lie.
    fn place(&self, at: BlockAddress, bytes: u64) -> Result<Vec<Piece>, FsError> {
        let map = self.maps.get(at.partition as usize).ok_or_else(|| {
            FsError::Damaged(format!(
                "UDF partition reference {} has no map",
                at.partition
            ))
        })?;
        match map {
            PartitionMap::Physical { start_sector, .. } => Ok(vec![Piece::Disc {
                offset: (start_sector + u64::from(at.block)) * self.block_size,
                len: bytes,
            }]),
            PartitionMap::Metadata { physical, runs } => {
                let mut pieces = Vec::new();
                let mut block = u64::from(at.block);
                let mut left = bytes;
                let mut run_start = 0u64;
                for &(first, count) in runs {
                    let count = u64::from(count);
                    if left > 0 && block < run_start + count {
                        let within = block - run_start;
                        let take = ((count - within) * self.block_size).min(left);
                        pieces.extend(self.place(
                            BlockAddress {
                                block: first + within as u32,
                                partition: *physical,
                            },
                            take,
                        )?);
                        left -= take;
                        block += take.div_ceil(self.block_size);
                    }
                    run_start += count;
                }
                if left > 0 {
                    return Err(FsError::Damaged(
                        "a UDF metadata block lies past the metadata file".into(),
                    ));
                }
                Ok(pieces)
            }
        }
    }

    fn read_block<R: Read + Seek>(
        &self,
        disc: &mut R,
        at: BlockAddress,
    ) -> Result<Vec<u8>, FsError> {
        let node = Node {
            is_dir: false,
            pieces: self.place(at, self.block_size)?,
        };
        Ok(read_all(disc, &node)?)
    }

    /// Reads a (extended) file entry: its type and where its data lies.
    fn file_entry<R: Read + Seek>(
        &self,
        disc: &mut R,
        at: BlockAddress,
    ) -> Result<FileEntry, FsError> {
        let b = self.read_block(disc, at)?;
        let (ea_len_at, ad_start) = match tag_id(&b) {
            Some(TAG_FILE_ENTRY) => (168, 176),
            Some(TAG_EXTENDED_FILE_ENTRY) => (208, 216),
            _ => {
                return Err(FsError::Damaged(format!(
                    "no UDF file entry at block {} of partition {}",
                    at.block, at.partition
                )));
            }
        };
        let file_type = b[27];
        let flags = le16(&b, 34);
        let size = le64(&b, 56);
        let ea_len = le32(&b, ea_len_at) as usize;
        let ad_len = le32(&b, ea_len_at + 4) as usize;
        let ads = b
            .get(ad_start + ea_len..ad_start + ea_len + ad_len)
            .ok_or_else(|| FsError::Damaged("a UDF file entry overruns its block".into()))?;
        let mut entry = FileEntry {
            is_dir: file_type == 4,
            size,
            extents: Vec::new(),
            embedded: None,
        };
        match flags & 7 {
            0 | 1 => self.allocation(disc, ads, flags & 7, at.partition, &mut entry)?,
            3 => entry.embedded = Some(ads.to_vec()),
            t => {
                return Err(FsError::Damaged(format!(
                    "unsupported UDF allocation descriptor type {t}"
                )));
            }
        }
        Ok(entry)
    }

    /// Collects `short_ad` (kind 0) or `long_ad` (kind 1) extents, following
    /// Allocation Extent Descriptors.
    fn allocation<R: Read + Seek>(
        &self,
        disc: &mut R,
        ads: &[u8],
        kind: u16,
        partition: u16,
        entry: &mut FileEntry,
    ) -> Result<(), FsError> {
        let step = if kind == 0 { 8 } else { 16 };
        let mut ads = ads.to_vec();
        loop {
            let mut next = None;
            for ad in ads.chunks_exact(step) {
                let raw_len = le32(ad, 0);
                let len = raw_len & 0x3fff_ffff;
                if len == 0 {
                    break;
                }
                let addr = if kind == 0 {
                    BlockAddress {
                        block: le32(ad, 4),
                        partition,
                    }
                } else {
                    long_ad(ad, 0).1
                };
                match raw_len >> 30 {
                    3 => {
                        next = Some(addr);
                        break;
                    }
                    0 => entry.extents.push((len, addr)),
                    // Allocated or not, unrecorded extents read as zeros.
                    _ => entry.extents.push((
                        len,
                        BlockAddress {
                            block: u32::MAX,
                            partition: u16::MAX,
                        },
                    )),
                }
                if entry.extents.len() > MAX_EXTENTS {
                    return Err(FsError::Damaged("a UDF file with too many extents".into()));
                }
            }
            let Some(at) = next else { return Ok(()) };
            let b = self.read_block(disc, at)?;
            if tag_id(&b) != Some(TAG_ALLOCATION_EXTENT) {
                return Err(FsError::Damaged(
                    "a UDF allocation extent descriptor is missing".into(),
                ));
            }
            let len = le32(&b, 20) as usize;
            ads = b
                .get(24..24 + len)
                .ok_or_else(|| {
                    FsError::Damaged("a UDF allocation extent overruns its block".into())
                })?
                .to_vec();
        }
    }

    fn node<R: Read + Seek>(&self, disc: &mut R, at: BlockAddress) -> Result<Node, FsError> {
        let entry = self.file_entry(disc, at)?;
        let mut pieces = Vec::new();
        if let Some(data) = entry.embedded {
            pieces.push(Piece::Bytes(data));
        }
        for (len, addr) in entry.extents {
            if addr.partition == u16::MAX {
                pieces.push(Piece::Zeros {
                    len: u64::from(len),
                });
            } else {
                pieces.extend(self.place(addr, u64::from(len))?);
            }
        }
        truncate(&mut pieces, entry.size);
        Ok(Node {
            is_dir: entry.is_dir,
            pieces,
        })
    }

    /// Finds `path` (components compared case-insensitively).
    pub fn lookup<R: Read + Seek>(
        &self,
        disc: &mut R,
        path: &[&str],
    ) -> Result<Option<Node>, FsError> {
        let mut node = self.node(disc, self.root)?;
        for want in path {
            if !node.is_dir {
                return Ok(None);
            }
            match self.find_in(disc, &node, want)? {
                Some(at) => node = self.node(disc, at)?,
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
    ) -> Result<Option<BlockAddress>, FsError> {
        if dir.size() > MAX_DIR_BYTES {
            return Err(FsError::Damaged(format!(
                "a UDF directory of {} bytes",
                dir.size()
            )));
        }
        let data = read_all(disc, dir)?;
        let mut pos = 0;
        while pos + 38 <= data.len() {
            let fid = &data[pos..];
            if tag_id(fid) != Some(TAG_FILE_ID) {
                return Err(FsError::Damaged(format!(
                    "no UDF file identifier at offset {pos} of a directory"
                )));
            }
            let characteristics = fid[18];
            let name_len = fid[19] as usize;
            let (_, icb) = long_ad(fid, 20);
            let iu_len = le16(fid, 36) as usize;
            let total = (38 + iu_len + name_len).next_multiple_of(4);
            let name = fid
                .get(38 + iu_len..38 + iu_len + name_len)
                .ok_or_else(|| {
                    FsError::Damaged("a UDF file identifier overruns its directory".into())
                })?;
            pos += total;
            // Deleted (bit 2) and parent (bit 3) entries.
            if characteristics & 0x0c != 0 {
                continue;
            }
            if same_name(&decode_name(name), want) {
                return Ok(Some(icb));
            }
        }
        Ok(None)
    }
}

struct FileEntry {
    is_dir: bool,
    size: u64,
    /// `(length in bytes, address)`; unrecorded extents have partition u16::MAX.
    extents: Vec<(u32, BlockAddress)>,
    embedded: Option<Vec<u8>>,
}

/// OSTA compressed Unicode (UDF 2.1.1; 254/255 are UDF 2.50's variants).
fn decode_name(b: &[u8]) -> String {
    match b.split_first() {
        Some((8 | 254, rest)) => rest.iter().map(|&c| char::from(c)).collect(),
        Some((16 | 255, rest)) => {
            let units = rest
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .map(|c| c.unwrap_or('\u{fffd}'))
                .collect()
        }
        _ => String::new(),
    }
}
