//! `cygvm pull`: an artifact into the local store, as an image directory.
//!
//! Layers are fetched on several connections and written at their offsets
//! (disk slices decompressed on the way); each is checked against its
//! digest and its uncompressed digest, synced, and recorded as done, so a
//! pull that is killed resumes with the layers it lacks. A layer that does
//! not match its digest ends the pull and removes everything it wrote.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::artifact::{ArtifactLayout, LayerKind, OciManifest, PulledLayer};
use super::client::RegistryClient;
use super::progress::{BlobProgress, TransferProgress, human_bytes};
use super::push::sha256_digest;
use super::reference::{Reference, Selector};
use super::store::{Store, seal};
use crate::image::{CURRENT, MANIFEST, SECRETS};

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub store: PathBuf,
    pub plain_http: bool,
    /// Layers fetched at once.
    pub jobs: usize,
    /// A line per blob when stderr is not a terminal.
    pub lines: bool,
}

#[derive(Debug, Clone)]
pub struct Pulled {
    pub image_dir: PathBuf,
    pub pinned: Reference,
    /// False when the store already had it.
    pub fetched: bool,
    pub fetched_bytes: u64,
    /// Layers an interrupted pull had already written.
    pub resumed_layers: usize,
}

/// A blob whose bytes are not what its digest says.
#[derive(Debug, thiserror::Error)]
#[error(
    "blob {digest} from {repository} does not match its digest (its content hashes to {actual}); \
     the registry's copy is damaged or was changed; nothing of it was kept"
)]
pub struct DigestMismatch {
    pub digest: String,
    pub repository: String,
    pub actual: String,
}

pub fn pull(reference: &Reference, opts: &PullOptions) -> Result<Pulled> {
    let store = Store::new(&opts.store);
    // A pinned artifact already here needs no registry at all.
    if let Selector::Digest(d) = &reference.selector
        && store.has(d)
    {
        super::store::note_use(&store.image_dir(d));
        return Ok(Pulled {
            image_dir: store.image_dir(d),
            pinned: reference.clone(),
            fetched: false,
            fetched_bytes: 0,
            resumed_layers: 0,
        });
    }
    let client = RegistryClient::new(reference, opts.plain_http, false)?;
    let body = client.get_manifest(reference)?;
    let digest = sha256_digest(&body);
    if let Selector::Digest(want) = &reference.selector
        && *want != digest
    {
        return Err(DigestMismatch {
            digest: want.clone(),
            repository: reference.repository_name(),
            actual: digest,
        }
        .into());
    }
    let pinned = reference.pinned(&digest);
    let manifest: OciManifest = serde_json::from_slice(&body)
        .with_context(|| format!("{pinned}: the registry sent a manifest that is not OCI JSON"))?;
    let layout = ArtifactLayout::read(&pinned.to_string(), &manifest)?;

    let _lock = store.lock(&digest)?;
    let image_dir = store.image_dir(&digest);
    super::store::note_use(&image_dir);
    if store.has(&digest) {
        return Ok(Pulled {
            image_dir,
            pinned,
            fetched: false,
            fetched_bytes: 0,
            resumed_layers: 0,
        });
    }
    let partial = store.partial_dir(&digest);
    let job = PullJob {
        client: &client,
        partial: &partial,
        layout: &layout,
        progress: TransferProgress::new(opts.lines),
        fetched: AtomicU64::new(0),
    };
    let resumed = match job.run(&manifest, &body, opts.jobs) {
        Ok(resumed) => resumed,
        Err(e) => {
            if e.downcast_ref::<DigestMismatch>().is_some() {
                let _ = fs::remove_dir_all(&partial);
            }
            return Err(e.context(format!("cannot pull {pinned}")));
        }
    };
    fs::rename(&partial, &image_dir)
        .with_context(|| format!("cannot move the pulled image to {}", image_dir.display()))?;
    crate::fsutil::sync_dir(image_dir.parent().unwrap_or(&image_dir))?;
    Ok(Pulled {
        image_dir,
        pinned,
        fetched: true,
        fetched_bytes: job.fetched.load(Ordering::Relaxed),
        resumed_layers: resumed,
    })
}

struct PullJob<'a> {
    client: &'a RegistryClient,
    partial: &'a Path,
    layout: &'a ArtifactLayout,
    progress: TransferProgress,
    fetched: AtomicU64,
}

const DONE: &str = ".done";

impl PullJob<'_> {
    /// Fills the partial directory; returns how many layers were already done.
    fn run(&self, manifest: &OciManifest, body: &[u8], jobs: usize) -> Result<usize> {
        let gen_dir = self.partial.join(&self.layout.generation);
        fs::create_dir_all(gen_dir.join(crate::image::LOGS))
            .with_context(|| format!("cannot create {}", gen_dir.display()))?;
        fs::create_dir_all(self.partial.join(DONE))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.partial.join(SECRETS))?;

        // The config blob is the generation's manifest.json.
        let mut config = Vec::new();
        self.client
            .get_blob(&manifest.config.digest)?
            .take(16 << 20)
            .read_to_end(&mut config)
            .with_context(|| format!("cannot read blob {}", manifest.config.digest))?;
        let actual = sha256_digest(&config);
        if actual != manifest.config.digest {
            return Err(DigestMismatch {
                digest: manifest.config.digest.clone(),
                repository: self.repository(),
                actual,
            }
            .into());
        }
        crate::fsutil::write_atomic(&gen_dir.join(MANIFEST), &config, 0o644)?;
        crate::snapshot::Manifest::load(&gen_dir.join(MANIFEST))
            .context("the artifact's config blob is not a generation manifest")?;

        let mut files = Vec::new();
        for (path, len) in &self.layout.files {
            let full = self.partial.join(path);
            if let Some(parent) = full.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let secret = path.starts_with(SECRETS) || path.ends_with(crate::image::STATE);
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .read(true)
                .mode(if secret { 0o600 } else { 0o644 })
                .open(&full)
                .with_context(|| format!("cannot create {}", full.display()))?;
            file.set_len(*len)
                .with_context(|| format!("cannot size {}", full.display()))?;
            files.push((path.clone(), file));
        }
        let file_of = |p: &Path| files.iter().find(|(q, _)| q == p).map(|(_, f)| f);

        let next = AtomicUsize::new(0);
        let resumed = AtomicUsize::new(0);
        let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..jobs.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let layers = &self.layout.layers;
                        if i >= layers.len() || failure.lock().is_ok_and(|f| f.is_some()) {
                            return;
                        }
                        let marker = self.partial.join(DONE).join(i.to_string());
                        if marker.exists() {
                            resumed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let Some(file) = file_of(&layers[i].target) else {
                            continue;
                        };
                        // The line a user sees comes after the marker: what
                        // is reported as pulled is never fetched again.
                        let r = self.fetch_layer(&layers[i], file).and_then(|(bar, bytes)| {
                            File::create(&marker)
                                .with_context(|| format!("cannot write {}", marker.display()))?;
                            bar.finish(&format!("pulled {}", human_bytes(bytes)));
                            Ok(())
                        });
                        if let Err(e) = r {
                            failure
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        drop(files);
        fs::remove_dir_all(self.partial.join(DONE))?;
        let link = self.partial.join(CURRENT);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&self.layout.generation, &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
        crate::fsutil::write_atomic(&self.partial.join("artifact.json"), body, 0o644)?;
        let pulled_from = format!("{}@{}\n", self.repository(), sha256_digest(body));
        crate::fsutil::write_atomic(
            &self.partial.join(super::store::PULLED_FROM),
            pulled_from.as_bytes(),
            0o644,
        )?;
        seal(self.partial)?;
        Ok(resumed.into_inner())
    }

    fn repository(&self) -> String {
        format!("{}/{}", self.client.registry, self.client.repository)
    }

    /// Fetches one layer into its place in `file`, verified and synced;
    /// returns its progress bar and the bytes received.
    fn fetch_layer(&self, layer: &PulledLayer, file: &File) -> Result<(BlobProgress, u64)> {
        let d = &layer.descriptor;
        let bar = self.progress.blob(
            format!("{} @{}", layer.target.display(), human_bytes(layer.offset)),
            d.size,
        );
        let blob = self.client.get_blob(&d.digest)?;
        let mut wire = HashingReader {
            inner: blob,
            hasher: Sha256::new(),
            len: 0,
            progress: &|n| bar.inc(n),
        };
        let mut content = Sha256::new();
        let mut written = 0u64;
        let mut write_error: Option<anyhow::Error> = None;
        let mut write = |buf: &[u8]| -> std::io::Result<()> {
            let r = if written + buf.len() as u64 > layer.len {
                Err(anyhow::anyhow!(
                    "blob {} holds more than the {} bytes it is annotated with",
                    d.digest,
                    layer.len
                ))
            } else {
                file.write_all_at(buf, layer.offset + written)
                    .with_context(|| format!("cannot write {}", layer.target.display()))
            };
            match r {
                Ok(()) => {
                    content.update(buf);
                    written += buf.len() as u64;
                    Ok(())
                }
                Err(e) => {
                    write_error = Some(e);
                    Err(std::io::Error::other("write failed"))
                }
            }
        };
        let mut buf = vec![0u8; 1 << 20];
        let copied: std::io::Result<()> = (|| {
            let mut pump = |r: &mut dyn Read| -> std::io::Result<()> {
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    write(&buf[..n])?;
                }
            };
            match layer.kind {
                LayerKind::Slice => pump(&mut zstd::stream::Decoder::new(&mut wire)?)?,
                LayerKind::Verbatim => pump(&mut wire)?,
            }
            // Anything after the zstd frame still counts for the digest.
            std::io::copy(&mut (&mut wire).take(d.size + 1), &mut std::io::sink())?;
            Ok(())
        })();
        if let Some(e) = write_error {
            return Err(e);
        }
        if let Err(e) = copied {
            // Data that does not decompress is reported by its digest when
            // the whole blob arrived and does not match it.
            let _ = std::io::copy(&mut (&mut wire).take(d.size + 1), &mut std::io::sink());
            let actual = format!("sha256:{}", hex::encode(wire.hasher.clone().finalize()));
            if actual != d.digest {
                return Err(self.mismatch(d, actual));
            }
            return Err(anyhow::Error::new(e).context(format!("cannot fetch blob {}", d.digest)));
        }
        let actual = format!("sha256:{}", hex::encode(wire.hasher.clone().finalize()));
        let received = wire.len;
        if actual != d.digest || received != d.size {
            return Err(self.mismatch(d, actual));
        }
        let content = format!("sha256:{}", hex::encode(content.finalize()));
        if content != layer.content_digest || written != layer.len {
            return Err(DigestMismatch {
                digest: layer.content_digest.clone(),
                repository: self.repository(),
                actual: content,
            }
            .into());
        }
        file.sync_data()
            .with_context(|| format!("cannot sync {}", layer.target.display()))?;
        self.fetched.fetch_add(received, Ordering::Relaxed);
        Ok((bar, received))
    }

    fn mismatch(&self, d: &super::artifact::Descriptor, actual: String) -> anyhow::Error {
        DigestMismatch {
            digest: d.digest.clone(),
            repository: self.repository(),
            actual,
        }
        .into()
    }
}

struct HashingReader<'a, R> {
    inner: R,
    hasher: Sha256,
    len: u64,
    progress: &'a dyn Fn(u64),
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
}
