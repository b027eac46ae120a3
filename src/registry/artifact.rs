//! A generation as one OCI artifact (image-spec 1.1 manifest):
//!
//! - `artifactType` [`ARTIFACT_TYPE`]; the config blob is the generation's
//!   `manifest.json` ([`CONFIG_MEDIA_TYPE`]);
//! - every file but `state.gz` cut into [`SLICE_BYTES`] slices, each
//!   compressed with zstd ([`SLICE_MEDIA_TYPE`]), its offset and
//!   uncompressed size and digest in annotations;
//! - `state.gz` cut on gzip member boundaries into layers of about
//!   [`SLICE_BYTES`] ([`STATE_MEDIA_TYPE`]): each layer is valid gzip and
//!   their concatenation is `state.gz` byte for byte;
//! - the secrets a run logs in with ([`SECRET_MEDIA_TYPE`]).
//!
//! Every layer names the file it belongs to by its path in the image
//! directory (`gen-0003/disk.qcow2`, `secrets/client_ed25519`).

use crate::derived::request::KEPT_INDEX_DIR;
use crate::media::build::INDEX_NAMES;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::{DISK, Generation, ImageDir, MANIFEST, STATE, generation_name};
use crate::secrets::{CLIENT_KEY, HOST_KEY, SAMBA_PASSWORD};
use crate::snapshot::Manifest;

pub const ARTIFACT_TYPE: &str = "application/vnd.cygvm.generation.v1";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cygvm.generation.manifest.v1+json";
pub const SLICE_MEDIA_TYPE: &str = "application/vnd.cygvm.file.slice.v1+zstd";
pub const STATE_MEDIA_TYPE: &str = "application/vnd.cygvm.state.v1+gzip";
pub const SECRET_MEDIA_TYPE: &str = "application/vnd.cygvm.secret.v1";

pub const ANN_FILE: &str = "cygvm.file";
pub const ANN_OFFSET: &str = "cygvm.offset";
pub const ANN_SIZE: &str = "cygvm.uncompressed.size";
pub const ANN_DIGEST: &str = "cygvm.uncompressed.digest";
pub const ANN_IMAGE: &str = "cygvm.image";
pub const ANN_GENERATION: &str = "cygvm.generation";
const ANN_CREATED: &str = "org.opencontainers.image.created";

/// Bytes of a file per layer (tart's choice): large enough that a 40 GB
/// disk is ~80 requests, small enough that an interrupted pull loses little.
pub const SLICE_BYTES: u64 = 512 << 20;

/// zstd level 3: on a qcow2 disk, within a few percent of `gzip -6`'s size
/// at several times its speed, and decompressed at memory speed.
pub const ZSTD_LEVEL: i32 = 3;

/// Generation files that are shipped besides `state.gz`, when present.
const GENERATION_FILES: [&str; 3] = [DISK, "OVMF_VARS.fd", "config.toml"];
/// The secrets a run needs: the key it logs in with, the host key it pins
/// and the password the guest mounts the shares with.
const RUN_SECRETS: [&str; 3] = [CLIENT_KEY, HOST_KEY, SAMBA_PASSWORD];

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path} is missing or unreadable")]
    Missing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
    #[error("{reference} is not a cygvm generation: {reason}")]
    NotAGeneration { reference: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciManifest {
    pub schema_version: u32,
    pub media_type: String,
    #[serde(default)]
    pub artifact_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How a layer's bytes relate to its file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// zstd of the file's bytes.
    Slice,
    /// The file's bytes as they are (state.gz member groups, secrets).
    Verbatim,
}

/// One layer to push: `len` bytes of `source` from `offset`.
#[derive(Debug, Clone)]
pub struct PlannedLayer {
    pub kind: LayerKind,
    pub media_type: &'static str,
    pub source: PathBuf,
    /// Path in the image directory.
    pub target: String,
    pub offset: u64,
    pub len: u64,
}

/// The layers of `generation`, in manifest order.
pub fn plan(
    image: &ImageDir,
    generation: &Generation,
    manifest: &Manifest,
    slice: u64,
) -> Result<Vec<PlannedLayer>, ArtifactError> {
    let gen_name = generation_name(generation.number);
    let mut layers = Vec::new();
    for name in GENERATION_FILES {
        let source = generation.dir.join(name);
        if name != DISK && !source.exists() {
            continue;
        }
        slices(&mut layers, &source, format!("{gen_name}/{name}"), slice)?;
    }
    // The package index the generation was made from, for the runs that
    // add packages to it (docs/cygport.md).
    for name in INDEX_NAMES {
        let source = generation.dir.join(KEPT_INDEX_DIR).join(name);
        if source.is_file() {
            slices(
                &mut layers,
                &source,
                format!("{gen_name}/{KEPT_INDEX_DIR}/{name}"),
                slice,
            )?;
        }
    }
    if generation.has_snapshot() {
        let state = generation.state();
        let summary = manifest
            .state
            .as_ref()
            .ok_or_else(|| ArtifactError::Inconsistent {
                path: state.clone(),
                reason: "its manifest does not describe it; run `cygvm refresh`".into(),
            })?;
        let len = file_len(&state)?;
        if len != summary.size {
            return Err(ArtifactError::Inconsistent {
                path: state,
                reason: format!("{len} bytes, its manifest says {}", summary.size),
            });
        }
        let target = format!("{gen_name}/{STATE}");
        let mut start = 0u64;
        for m in &summary.members {
            if m.offset + m.compressed_len - start >= slice {
                layers.push(verbatim(
                    STATE_MEDIA_TYPE,
                    &state,
                    &target,
                    start,
                    m.offset + m.compressed_len,
                ));
                start = m.offset + m.compressed_len;
            }
        }
        if start < len || summary.members.is_empty() {
            layers.push(verbatim(STATE_MEDIA_TYPE, &state, &target, start, len));
        }
    }
    for name in RUN_SECRETS {
        let source = image.secrets().join(name);
        let len = file_len(&source)?;
        layers.push(verbatim(
            SECRET_MEDIA_TYPE,
            &source,
            &format!("secrets/{name}"),
            0,
            len,
        ));
    }
    Ok(layers)
}

/// `source` as slices of at most `slice` bytes; an empty file is one empty
/// slice, so it is still recreated.
fn slices(
    layers: &mut Vec<PlannedLayer>,
    source: &Path,
    target: String,
    slice: u64,
) -> Result<(), ArtifactError> {
    let len = file_len(source)?;
    let mut offset = 0;
    loop {
        let n = slice.min(len - offset);
        layers.push(PlannedLayer {
            kind: LayerKind::Slice,
            media_type: SLICE_MEDIA_TYPE,
            source: source.to_path_buf(),
            target: target.clone(),
            offset,
            len: n,
        });
        offset += n;
        if offset >= len {
            return Ok(());
        }
    }
}

fn verbatim(
    media_type: &'static str,
    source: &Path,
    target: &str,
    start: u64,
    end: u64,
) -> PlannedLayer {
    PlannedLayer {
        kind: LayerKind::Verbatim,
        media_type,
        source: source.to_path_buf(),
        target: target.to_string(),
        offset: start,
        len: end - start,
    }
}

fn file_len(path: &Path) -> Result<u64, ArtifactError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| ArtifactError::Missing {
            path: path.to_path_buf(),
            source,
        })
}

/// The descriptor of a pushed layer.
pub fn layer_descriptor(
    layer: &PlannedLayer,
    digest: &str,
    size: u64,
    uncompressed: Option<&str>,
) -> Descriptor {
    let mut annotations = BTreeMap::from([
        (ANN_FILE.to_string(), layer.target.clone()),
        (ANN_OFFSET.to_string(), layer.offset.to_string()),
    ]);
    if let Some(u) = uncompressed {
        annotations.insert(ANN_SIZE.to_string(), layer.len.to_string());
        annotations.insert(ANN_DIGEST.to_string(), u.to_string());
    }
    Descriptor {
        media_type: layer.media_type.to_string(),
        digest: digest.to_string(),
        size,
        annotations,
    }
}

/// The artifact's manifest, given its config blob and layers.
pub fn artifact_manifest(
    image_name: &str,
    generation: &Generation,
    manifest: &Manifest,
    config: Descriptor,
    layers: Vec<Descriptor>,
) -> OciManifest {
    OciManifest {
        schema_version: 2,
        media_type: super::client::MANIFEST_MEDIA_TYPE.to_string(),
        artifact_type: ARTIFACT_TYPE.to_string(),
        config,
        layers,
        annotations: BTreeMap::from([
            (ANN_IMAGE.to_string(), image_name.to_string()),
            (
                ANN_GENERATION.to_string(),
                generation_name(generation.number),
            ),
            (ANN_CREATED.to_string(), manifest.created.clone()),
        ]),
    }
}

/// A layer as a pull writes it.
#[derive(Debug, Clone)]
pub struct PulledLayer {
    pub descriptor: Descriptor,
    pub kind: LayerKind,
    /// Path in the image directory, checked to stay inside it.
    pub target: PathBuf,
    pub offset: u64,
    /// Bytes it fills in its file.
    pub len: u64,
    /// sha256 of those bytes (`sha256:…`).
    pub content_digest: String,
}

/// What a pull makes of an artifact: its generation's name and layers,
/// and each file's size. Refuses anything that could write outside the
/// image directory or leave a hole in a file.
#[derive(Debug, Clone)]
pub struct ArtifactLayout {
    pub generation: String,
    pub image_name: String,
    pub layers: Vec<PulledLayer>,
    pub files: BTreeMap<PathBuf, u64>,
}

impl ArtifactLayout {
    pub fn read(reference: &str, manifest: &OciManifest) -> Result<Self, ArtifactError> {
        let fail = |reason: String| ArtifactError::NotAGeneration {
            reference: reference.to_string(),
            reason,
        };
        if manifest.artifact_type != ARTIFACT_TYPE
            && manifest.config.media_type != CONFIG_MEDIA_TYPE
        {
            return Err(fail(format!(
                "its artifact type is {:?}, not {ARTIFACT_TYPE}",
                manifest.artifact_type
            )));
        }
        let generation = manifest
            .annotations
            .get(ANN_GENERATION)
            .filter(|g| crate::image::parse_generation(g).is_some())
            .ok_or_else(|| {
                fail(format!(
                    "no {ANN_GENERATION} annotation of the form gen-NNNN"
                ))
            })?
            .clone();
        let image_name = manifest
            .annotations
            .get(ANN_IMAGE)
            .cloned()
            .unwrap_or_default();
        let mut layers = Vec::new();
        for (i, d) in manifest.layers.iter().enumerate() {
            let ann = |k: &str| {
                d.annotations
                    .get(k)
                    .ok_or_else(|| fail(format!("layer {i} has no {k} annotation")))
            };
            let num = |k: &str| -> Result<u64, ArtifactError> {
                ann(k)?
                    .parse()
                    .map_err(|_| fail(format!("layer {i}: {k} is not a number")))
            };
            let file = ann(ANN_FILE)?;
            let target = PathBuf::from(file);
            let parts: Vec<_> = target.components().collect();
            let named = |c: &Component, name: &str| matches!(c, Component::Normal(n) if *n == name);
            let inside = match parts.as_slice() {
                [dir, Component::Normal(_)] => {
                    named(dir, &generation) || named(dir, crate::image::SECRETS)
                }
                [dir, index, Component::Normal(name)] => {
                    named(dir, &generation)
                        && named(index, KEPT_INDEX_DIR)
                        && INDEX_NAMES.iter().any(|n| name == n)
                }
                _ => false,
            };
            if !inside || file.contains('\\') {
                return Err(fail(format!(
                    "layer {i} names the file {file:?}, outside {generation}/ and secrets/"
                )));
            }
            let (kind, len, content_digest) = match d.media_type.as_str() {
                SLICE_MEDIA_TYPE => (LayerKind::Slice, num(ANN_SIZE)?, ann(ANN_DIGEST)?.clone()),
                STATE_MEDIA_TYPE | SECRET_MEDIA_TYPE => {
                    (LayerKind::Verbatim, d.size, d.digest.clone())
                }
                other => {
                    return Err(fail(format!(
                        "layer {i} has the unknown media type {other}"
                    )));
                }
            };
            if !content_digest.starts_with("sha256:") || !d.digest.starts_with("sha256:") {
                return Err(fail(format!("layer {i} is not addressed by sha256")));
            }
            layers.push(PulledLayer {
                descriptor: d.clone(),
                kind,
                target,
                offset: num(ANN_OFFSET)?,
                len,
                content_digest,
            });
        }
        // Each file's layers must tile it from 0 without gaps or overlaps.
        let mut files = BTreeMap::new();
        let mut by_file: BTreeMap<&Path, Vec<&PulledLayer>> = BTreeMap::new();
        for l in &layers {
            by_file.entry(&l.target).or_default().push(l);
        }
        for (path, mut ls) in by_file {
            ls.sort_by_key(|l| l.offset);
            let mut end = 0;
            for l in ls {
                if l.offset != end {
                    return Err(fail(format!(
                        "the layers of {} leave a gap or overlap at offset {end}",
                        path.display()
                    )));
                }
                end += l.len;
            }
            files.insert(path.to_path_buf(), end);
        }
        let manifest_json = PathBuf::from(&generation).join(MANIFEST);
        let disk = PathBuf::from(&generation).join(DISK);
        if !files.contains_key(&disk) {
            return Err(fail(format!("it has no {DISK}")));
        }
        if files.contains_key(&manifest_json) {
            return Err(fail(format!(
                "{MANIFEST} comes from the config blob, not a layer"
            )));
        }
        Ok(Self {
            generation,
            image_name,
            layers,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(media_type: &str, file: &str, offset: u64, size: u64) -> Descriptor {
        let mut annotations = BTreeMap::from([
            (ANN_FILE.to_string(), file.to_string()),
            (ANN_OFFSET.to_string(), offset.to_string()),
        ]);
        if media_type == SLICE_MEDIA_TYPE {
            annotations.insert(ANN_SIZE.to_string(), size.to_string());
            annotations.insert(ANN_DIGEST.to_string(), format!("sha256:{}", "0".repeat(64)));
        }
        Descriptor {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", "1".repeat(64)),
            size,
            annotations,
        }
    }

    fn manifest(layers: Vec<Descriptor>) -> OciManifest {
        OciManifest {
            schema_version: 2,
            media_type: super::super::client::MANIFEST_MEDIA_TYPE.into(),
            artifact_type: ARTIFACT_TYPE.into(),
            config: descriptor(CONFIG_MEDIA_TYPE, "x", 0, 1),
            layers,
            annotations: BTreeMap::from([(ANN_GENERATION.to_string(), "gen-0002".to_string())]),
        }
    }

    #[test]
    fn a_layout_tiles_its_files() {
        let m = manifest(vec![
            descriptor(SLICE_MEDIA_TYPE, "gen-0002/disk.qcow2", 0, 10),
            descriptor(SLICE_MEDIA_TYPE, "gen-0002/disk.qcow2", 10, 5),
            descriptor(STATE_MEDIA_TYPE, "gen-0002/state.gz", 0, 7),
            descriptor(SECRET_MEDIA_TYPE, "secrets/client_ed25519", 0, 3),
            descriptor(SLICE_MEDIA_TYPE, "gen-0002/cygwin-index/setup.zst", 0, 4),
        ]);
        let layout = ArtifactLayout::read("r", &m).unwrap();
        assert_eq!(
            layout.files[Path::new("gen-0002/cygwin-index/setup.zst")],
            4
        );
        assert_eq!(layout.files[Path::new("gen-0002/disk.qcow2")], 15);
        assert_eq!(layout.files[Path::new("gen-0002/state.gz")], 7);
        assert_eq!(layout.generation, "gen-0002");
    }

    #[test]
    fn layouts_that_escape_or_leave_holes_are_refused() {
        for (file, offset) in [
            ("../evil", 0),
            ("gen-0002/../../evil", 0),
            ("/etc/passwd", 0),
            ("gen-0001/disk.qcow2", 0),
            ("gen-0002/sub/x", 0),
            ("gen-0002/cygwin-index/evil", 0),
            ("gen-0002/cygwin-index/../disk.qcow2", 0),
            ("secrets/cygwin-index/setup.zst", 0),
            ("gen-0002/disk.qcow2", 3),
        ] {
            let m = manifest(vec![
                descriptor(SLICE_MEDIA_TYPE, "gen-0002/disk.qcow2", 0, 10),
                descriptor(SLICE_MEDIA_TYPE, file, 10 + offset, 5),
            ]);
            let err = ArtifactLayout::read("r", &m).unwrap_err().to_string();
            assert!(
                err.starts_with("r is not a cygvm generation"),
                "{file}: {err}"
            );
        }
        let mut m = manifest(vec![descriptor(
            SLICE_MEDIA_TYPE,
            "gen-0002/disk.qcow2",
            0,
            10,
        )]);
        m.artifact_type = "application/vnd.oci.image.config.v1+json".into();
        m.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        assert!(
            ArtifactLayout::read("r", &m)
                .unwrap_err()
                .to_string()
                .contains("artifact type")
        );
    }
}
