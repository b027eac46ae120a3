//! `cygvm push`: the image's current generation as one OCI artifact.
//!
//! Layers are prepared (disk slices compressed, state.gz member groups
//! hashed) on all cores; each is skipped when the registry already has its
//! digest, else uploaded (in chunks when large). The manifest goes last,
//! under the generation's tag and `latest`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::artifact::{self, CONFIG_MEDIA_TYPE, Descriptor, LayerKind, PlannedLayer, ZSTD_LEVEL};
use super::client::{Payload, RegistryClient};
use super::progress::{TransferProgress, human_bytes};
use super::reference::{Reference, Selector};
use crate::image::{ImageDir, generation_name};
use crate::snapshot::Manifest;

#[derive(Debug, Clone)]
pub struct PushOptions {
    pub image: PathBuf,
    pub target: Reference,
    pub plain_http: bool,
    /// Bytes of a file per layer.
    pub slice_bytes: u64,
    /// Layers prepared and sent at once.
    pub jobs: usize,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The artifact, pinned by its manifest's digest.
    pub pinned: Reference,
    pub tags: Vec<String>,
    pub layers: usize,
    /// Bytes of all blobs (config and layers) as stored in the registry.
    pub total_bytes: u64,
    /// Of those, the bytes of blobs the registry already had.
    pub skipped_bytes: u64,
    pub skipped_layers: usize,
}

pub fn push(opts: &PushOptions) -> Result<Pushed> {
    if let Selector::Digest(_) = opts.target.selector {
        bail!(
            "{}: push to a repository or a tag; the digest is the manifest's and is printed after the push",
            opts.target
        );
    }
    let image = ImageDir::new(&opts.image);
    let generation = image.current()?;
    let _in_use = generation.lock_shared()?;
    let manifest_bytes = std::fs::read(generation.manifest())
        .with_context(|| format!("cannot read {}", generation.manifest().display()))?;
    let manifest = Manifest::load(&generation.manifest())?;
    if let Some(state) = &manifest.state {
        crate::snapshot::verify(&generation.state(), state)
            .with_context(|| format!("will not push {}", generation.dir.display()))?;
    }
    let layers = artifact::plan(&image, &generation, &manifest, opts.slice_bytes.max(1))?;
    let client = RegistryClient::new(&opts.target, opts.plain_http, true)?;
    let progress = TransferProgress::new(true);
    let staging = tempfile::Builder::new()
        .prefix(".push-")
        .tempdir_in(&image.root)
        .with_context(|| {
            format!(
                "cannot create a staging directory in {}",
                image.root.display()
            )
        })?;

    let config_digest = sha256_digest(&manifest_bytes);
    let config = Descriptor {
        media_type: CONFIG_MEDIA_TYPE.to_string(),
        digest: config_digest.clone(),
        size: manifest_bytes.len() as u64,
        annotations: Default::default(),
    };
    let mut skipped_bytes = 0;
    let mut skipped_layers = 0;
    if client.has_blob(&config_digest)? {
        skipped_bytes += config.size;
    } else {
        client.upload_blob(&config_digest, &Payload::Bytes(&manifest_bytes))?;
    }

    let results: Vec<Mutex<Option<(Descriptor, bool)>>> =
        layers.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= layers.len() || failure.lock().is_ok_and(|f| f.is_some()) {
                        return;
                    }
                    match push_layer(&client, &layers[i], i, staging.path(), &progress) {
                        Ok(r) => *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r),
                        Err(e) => {
                            let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                            f.get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e.context(format!(
            "cannot push {} to {}",
            generation.dir.display(),
            opts.target
        )));
    }
    let mut descriptors = Vec::new();
    let mut total_bytes = config.size;
    for r in results {
        let Some((d, skipped)) = r.into_inner().unwrap_or_else(|e| e.into_inner()) else {
            bail!("a layer was not pushed");
        };
        total_bytes += d.size;
        if skipped {
            skipped_bytes += d.size;
            skipped_layers += 1;
        }
        descriptors.push(d);
    }
    let image_name = crate::config::Config::load_generation(&generation.dir)
        .map(|c| c.image.name.as_str().to_string())
        .unwrap_or_default();
    let oci = artifact::artifact_manifest(&image_name, &generation, &manifest, config, descriptors);
    let body = serde_json::to_vec_pretty(&oci)?;
    let digest = sha256_digest(&body);
    let mut tags = vec![generation_name(generation.number), "latest".to_string()];
    if let Selector::Tag(t) = &opts.target.selector
        && !tags.contains(t)
    {
        tags.insert(0, t.clone());
    }
    // By digest first, so a tag never points at a manifest the registry lacks.
    client.put_manifest(&digest, &body)?;
    for tag in &tags {
        client.put_manifest(tag, &body)?;
    }
    Ok(Pushed {
        pinned: opts.target.pinned(&digest),
        tags,
        layers: layers.len(),
        total_bytes,
        skipped_bytes,
        skipped_layers,
    })
}

/// Prepares, checks and (unless the registry has it) uploads one layer;
/// returns its descriptor and whether it was skipped.
fn push_layer(
    client: &RegistryClient,
    layer: &PlannedLayer,
    index: usize,
    staging: &Path,
    progress: &TransferProgress,
) -> Result<(Descriptor, bool)> {
    let bar = progress.blob(
        format!("{} @{}", layer.target, human_bytes(layer.offset)),
        layer.len,
    );
    let source = File::open(&layer.source)
        .with_context(|| format!("cannot open {}", layer.source.display()))?;
    let (file, offset, size, digest, uncompressed) = match layer.kind {
        LayerKind::Slice => {
            bar.set_message("compressing");
            let path = staging.join(format!("layer-{index}.zst"));
            let (digest, size, raw) = compress_slice(&source, layer, &path, &|n| bar.inc(n))
                .with_context(|| format!("cannot compress {}", layer.source.display()))?;
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // The file stays readable through the handle; the name can go.
            let _ = std::fs::remove_file(&path);
            (file, 0, size, digest, Some(raw))
        }
        LayerKind::Verbatim => {
            bar.set_message("hashing");
            let digest = hash_region(&source, layer.offset, layer.len)
                .with_context(|| format!("cannot read {}", layer.source.display()))?;
            (source, layer.offset, layer.len, digest, None)
        }
    };
    let descriptor = artifact::layer_descriptor(layer, &digest, size, uncompressed.as_deref());
    if client.has_blob(&digest)? {
        bar.restart(size, "");
        bar.inc(size);
        bar.finish(&format!(
            "skipped {} (already in the registry)",
            human_bytes(size)
        ));
        return Ok((descriptor, true));
    }
    bar.restart(size, "uploading");
    client.upload_blob(
        &digest,
        &Payload::File {
            file: &file,
            offset,
            len: size,
            progress: &|n| bar.inc(n),
        },
    )?;
    bar.finish(&format!("pushed {}", human_bytes(size)));
    Ok((descriptor, false))
}

/// zstd of the layer's bytes into `dest`; returns the compressed digest and
/// size, and the digest of the uncompressed bytes.
fn compress_slice(
    source: &File,
    layer: &PlannedLayer,
    dest: &Path,
    progress: &dyn Fn(u64),
) -> std::io::Result<(String, u64, String)> {
    let out = File::create(dest)?;
    let mut hashed = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, out),
        hasher: Sha256::new(),
        len: 0,
    };
    let mut raw = Sha256::new();
    {
        let mut encoder = zstd::stream::Encoder::new(&mut hashed, ZSTD_LEVEL)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = layer.offset;
        let end = layer.offset + layer.len;
        while pos < end {
            let want = (end - pos).min(buf.len() as u64) as usize;
            let n = source.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was pushed",
                ));
            }
            raw.update(&buf[..n]);
            encoder.write_all(&buf[..n])?;
            pos += n as u64;
            progress(n as u64);
        }
        encoder.finish()?;
    }
    hashed.inner.flush()?;
    let digest = format!("sha256:{}", hex::encode(hashed.hasher.finalize()));
    Ok((
        digest,
        hashed.len,
        format!("sha256:{}", hex::encode(raw.finalize())),
    ))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hash_region(file: &File, offset: u64, len: u64) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut region = ReadAt {
        file,
        pos: offset,
        end: offset + len,
    };
    std::io::copy(&mut region, &mut hasher)?;
    if region.pos != region.end {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file became shorter while it was pushed",
        ));
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
