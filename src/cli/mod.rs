//! Command-line definitions (clap derive) and the dispatch from arguments to
//! the library's jobs. No work is done here beyond turning arguments and the
//! config into requests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;

mod cygwin_cmd;

const AFTER_HELP: &str = "\
Examples:
  cygvm doctor
  cygvm cygwin resolve --setup-ini setup.xz openssh make
  cygvm cygwin mirror --setup-ini setup.xz --from https://mirror.example/cygwin/ --to mirror openssh
  cygvm media --config cygvm.toml --out media

Logs: set RUST_LOG=debug (or cygvm=trace) for more detail on stderr.";

#[derive(Debug, Parser)]
#[command(
    name = "cygvm",
    version,
    about = "A Windows + Cygwin build machine in seconds, from a Linux host",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the host has everything cygvm needs.
    #[command(after_help = "Example:\n  cygvm doctor --config cygvm.toml")]
    Doctor(DoctorArgs),
    /// Work with Cygwin package indexes and mirrors.
    #[command(subcommand)]
    Cygwin(CygwinCommand),
    /// Make an image: media, unattended install, boot, SSH, shares, provision.
    #[command(
        after_help = "Examples:\n  cygvm install --config cygvm.toml\n  cygvm install --config examples/standin/cygvm.toml --keep-failed"
    )]
    Install(InstallArgs),
    /// Run one command in a throwaway instance of an image.
    #[command(
        after_help = "Examples:\n  cygvm run --cold --image images/cygwin-build -- make -C /inputs\n  cygvm run --cold --image images/standin --input src --output out -- sh -c 'cp /inputs/* . && make'\n\nThe command runs in the guest's shell (Cygwin bash -l on Windows, sh on the\nstand-in) in /outputs, with the input directory at /inputs (read-only).\ncygvm exits with the command's exit status."
    )]
    Run(RunArgs),
    /// Update an image and save a new, verified snapshot generation.
    #[command(
        after_help = "Examples:\n  cygvm refresh --image images/cygwin-build\n  cygvm refresh --image images/cygwin-build -- sh -c 'echo more >> /etc/motd'\n\nWithout a command, Cygwin's setup upgrades the installed packages and adds\nthe configured ones from the configured mirror, then the provision commands\nrun. The new generation is revived once and must run `true` before it\nbecomes current; the last [image] keep generations are kept."
    )]
    Refresh(RefreshArgs),
    /// Push the image's current generation to an OCI registry.
    #[command(
        after_help = "Examples:\n  cygvm push --image images/cygwin-build registry.example/team/cygwin-build\n  cygvm push --image images/standin --plain-http 127.0.0.1:5000/standin\n\nThe generation becomes one OCI artifact (see docs/registry.md), tagged with\nthe generation (gen-NNNN), `latest` and the reference's tag if it has one.\nBlobs the registry already has are not sent again. The pinned reference\n(REGISTRY/REPO@sha256:…) is printed on stdout.\n\nCredentials: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,\n~/.docker/config.json (what `docker login` and `podman login` write)."
    )]
    Push(PushArgs),
    /// Pull an image generation from an OCI registry into the local store.
    #[command(
        after_help = "Examples:\n  cygvm pull registry.example/team/cygwin-build@sha256:…\n  cygvm pull --plain-http 127.0.0.1:5000/standin:latest\n\nThe image directory in the store is printed on stdout; `cygvm run --image`\ntakes it, or the reference itself. An interrupted pull resumes where it\nstopped; two pulls of one artifact on a host fetch it once."
    )]
    Pull(PullArgs),
    /// Write the install media: floppy.img, cygwin.iso, the answer file and a manifest.
    #[command(
        after_help = "Examples:\n  cygvm media --config cygvm.toml --out media\n  cygvm media --config cygvm.toml --list-editions\n\nWith `guest.iso` set, the configured `guest.edition` or `guest.index` is\nlooked up in the ISO's sources/install.wim (or install.esd) first; nothing\nis written if the ISO lacks it."
    )]
    Media(MediaArgs),
    /// Show, check or remove this host's snapshot caches (controller VM,
    /// expanded guest snapshots).
    #[command(
        subcommand,
        after_help = "Examples:\n  cygvm cache list\n  cygvm cache verify\n  cygvm cache prune --unused-for 30\n  cygvm cache remove --all\n\nThe caches live in $XDG_CACHE_HOME/cygvm (~/.cache/cygvm). Everything in\nthem is made again by the next run that needs it."
    )]
    Cache(CacheCommand),
    /// Build a Cygwin package from its .cygport, with its build
    /// dependencies added to the image.
    #[command(
        after_help = "Examples:\n  cygvm cygport --image images/cygwin-build foo/foo-1.2-1.cygport --output out\n  cygvm cygport --image images/cygwin-build foo/foo.cygport --output out prep compile\n  cygvm cygport --image images/cygwin-build foo/foo.cygport --output out --packages gcc-g++\n\nThe .cygport's directory (patches, source archives) is the guest's inputs.\nBUILD_REQUIRES and DEPEND are read from the file without running it; when\nit computes them, name the packages with --packages. cygport's dist/ and\nlog/ are copied to --output; cygvm exits with cygport's exit status."
    )]
    Cygport(CygportArgs),
    /// List or prune an image's derived generations (its generations with
    /// extra packages, made by `run --packages` and `cygport`).
    #[command(
        subcommand,
        after_help = "Examples:\n  cygvm derived list --image images/cygwin-build\n  cygvm derived prune --image images/cygwin-build --unused-for 14\n  cygvm derived prune --image images/cygwin-build --max-size 20G\n\nA derived generation lives in its generation's directory and goes when\nthe generation is pruned. One a run is using is never removed."
    )]
    Derived(DerivedCommand),
    /// List or prune the local store of pulled images.
    #[command(
        subcommand,
        after_help = "Examples:\n  cygvm store list\n  cygvm store prune --unused-for 14\n  cygvm store prune --max-size 50G --store /scratch/cygvm-oci\n\nA pull, and every run of a pulled image, counts as a use. An image a run\nis using is never removed; its snapshots in this host's cache go with it."
    )]
    Store(StoreCommand),
    /// The controller VM's agent (runs inside the controller, not on the host).
    #[command(hide = true)]
    Agent(AgentArgs),
}

#[derive(Debug, Subcommand)]
pub enum DerivedCommand {
    /// Each derived generation: its parent, packages, size and last use.
    List {
        /// The image directory (images/<name>).
        #[arg(long, value_name = "DIR")]
        image: PathBuf,
    },
    /// Remove derived generations not used for a while, or the least
    /// recently used ones beyond a total size.
    Prune {
        /// The image directory (images/<name>).
        #[arg(long, value_name = "DIR")]
        image: PathBuf,
        #[command(flatten)]
        limits: PruneArgs,
    },
}

/// What `derived prune` and `store prune` remove.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove those no run (or pull) has used for this many days.
    #[arg(long, value_name = "DAYS")]
    unused_for: Option<u64>,
    /// Then remove the least recently used until the rest take at most
    /// this much disk (e.g. 20G, 512M).
    #[arg(long, value_name = "SIZE")]
    max_size: Option<crate::config::ByteSize>,
}

impl PruneArgs {
    fn policy(&self) -> Result<crate::prune::PrunePolicy> {
        crate::prune::PrunePolicy::from_args(self.unused_for, self.max_size.map(|s| s.bytes()))
    }
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Each pulled image: what it was pulled from, its size and last use.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove pulled images not used for a while, or the least recently
    /// used ones beyond a total size.
    Prune {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        limits: PruneArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// What the caches hold: each snapshot, its size on disk and what it is for.
    List,
    /// Check every cached snapshot in full (hashing its RAM file); exits 1
    /// if one is damaged.
    Verify,
    /// Remove cached snapshots by name (as `list` shows), or all.
    Remove {
        names: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Remove the expanded snapshots no image holds any more (what the
    /// next snapshot made would remove anyway), and with --unused-for
    /// those of either kind no run has used for that long.
    Prune {
        #[arg(long, value_name = "DAYS")]
        unused_for: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The virtio-serial port to the host.
    #[arg(long, default_value = "/dev/virtio-ports/cygvm.agent")]
    pub port: PathBuf,
    /// JSON file with the guest address, user, client key and pinned host
    /// key. Without it the agent waits for the host's run settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The image's config file.
    #[arg(long, short = 'c', default_value = "cygvm.toml", value_name = "FILE")]
    pub config: PathBuf,
}

impl ConfigArg {
    pub fn load(&self) -> Result<Config> {
        Config::load(&self.config).with_context(|| {
            format!(
                "cannot use config {} (see docs/config.md for every key)",
                self.config.display()
            )
        })
    }
}

/// `--json[=FILE]`, for the jobs that report progress events.
#[derive(Debug, Args)]
pub struct EventsArg {
    /// Write progress events, one JSON object per line (docs/events.md), to
    /// stderr, or to FILE with --json=FILE.
    #[arg(
        long,
        value_name = "FILE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "-"
    )]
    pub json: Option<PathBuf>,
}

impl EventsArg {
    /// Turns events on for `job` when asked for.
    fn enable(&self, job: &'static str) -> Result<()> {
        if let Some(value) = &self.json {
            crate::events::enable(job, &crate::events::target(Some(value)))?;
        }
        Ok(())
    }

    /// Events on stderr take the place of cygvm's progress lines there.
    fn on_stderr(&self) -> bool {
        self.json.is_some()
            && crate::events::target(self.json.as_deref()) == crate::events::Target::Stderr
    }
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub events: EventsArg,
    /// Keep the run directory (logs, serial consoles) when the install
    /// fails, and the attempt's guest disk next to its logs.
    #[arg(long)]
    pub keep_failed: bool,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Talk to the registry over plain HTTP (a local test registry).
    #[arg(long)]
    pub plain_http: bool,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The local store of pulled images (default: ~/.cache/cygvm/oci).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    fn dir(&self) -> Result<PathBuf> {
        match &self.store {
            Some(d) => Ok(d.clone()),
            None => crate::registry::store::default_store(),
        }
    }
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image directory (images/<name>) whose current generation is pushed.
    #[arg(long, value_name = "DIR")]
    pub image: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// MiB of a file per layer.
    #[arg(long, value_name = "MIB", default_value_t = crate::registry::artifact::SLICE_BYTES >> 20)]
    pub slice_size: u64,
    /// Layers compressed and sent at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Where to: REGISTRY/REPO[:TAG].
    #[arg(value_name = "REFERENCE")]
    pub target: String,
    #[command(flatten)]
    pub events: EventsArg,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Layers fetched at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// What: REGISTRY/REPO@sha256:HEX or REGISTRY/REPO:TAG.
    #[arg(value_name = "REFERENCE")]
    pub reference: String,
    #[command(flatten)]
    pub events: EventsArg,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image directory (images/<name>), or a registry reference
    /// (REGISTRY/REPO@sha256:HEX, REGISTRY/REPO:TAG, or oci://…) pulled
    /// into the local store on first use.
    #[arg(long, value_name = "DIR|REFERENCE")]
    pub image: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Boot the image's disk instead of reviving a snapshot.
    #[arg(long)]
    pub cold: bool,
    /// Host directory the guest sees read-only at /inputs.
    #[arg(long, value_name = "DIR")]
    pub input: Option<PathBuf>,
    /// Host directory the guest writes to at /outputs (created if missing;
    /// without it the outputs are discarded).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Keep the run directory (logs, serial consoles) when the run fails.
    #[arg(long)]
    pub keep_failed: bool,
    #[command(flatten)]
    pub events: EventsArg,
    /// Cygwin packages the command needs beyond the image's (comma
    /// separated; repeatable). Added to those of cygvm-build.toml in the
    /// input directory.
    #[arg(long, value_name = "PKG,...")]
    pub packages: Vec<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CygportArgs {
    /// The image directory (images/<name>).
    #[arg(long, value_name = "DIR")]
    pub image: PathBuf,
    /// Where dist/ and log/ go (created if missing).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Packages to add beyond the .cygport's build dependencies (comma
    /// separated; repeatable).
    #[arg(long, value_name = "PKG,...")]
    pub packages: Vec<String>,
    /// Keep the run directory (logs, serial consoles) when the run fails.
    #[arg(long)]
    pub keep_failed: bool,
    /// The .cygport file.
    #[arg(value_name = "FILE.cygport")]
    pub cygport: PathBuf,
    /// cygport's steps (default: all).
    #[arg(value_name = "STEP")]
    pub steps: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The image directory (images/<name>).
    #[arg(long, value_name = "DIR")]
    pub image: PathBuf,
    /// Keep the run directory (logs, serial consoles) when the refresh fails.
    #[arg(long)]
    pub keep_failed: bool,
    #[command(flatten)]
    pub events: EventsArg,
    /// An update command to run instead of the default.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Config whose image directory is checked for free space; optional.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CygwinCommand {
    /// Print the closure of packages a Cygwin install needs, sorted.
    #[command(
        after_help = "Example:\n  cygvm cygwin resolve --setup-ini setup.xz openssh make\n  cygvm cygwin resolve --setup-ini setup.ini --json gcc-core"
    )]
    Resolve(ResolveArgs),
    /// Fetch and verify a closure's archives and lay out a local mirror for `setup.exe -L -l DIR`.
    #[command(
        after_help = "Example:\n  cygvm cygwin mirror --setup-ini setup.xz --from https://mirror.example/cygwin/ --to mirror openssh"
    )]
    Mirror(MirrorArgs),
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// setup.ini, setup.xz or setup.zst as a mirror publishes it.
    #[arg(long, value_name = "FILE")]
    pub setup_ini: PathBuf,
    /// Print version, size, path and hash of each package as JSON.
    #[arg(long)]
    pub json: bool,
    /// Packages to install (the Base category is always added).
    #[arg(required = true, value_name = "PKG")]
    pub packages: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// setup.ini, setup.xz or setup.zst as a mirror publishes it.
    #[arg(long, value_name = "FILE")]
    pub setup_ini: PathBuf,
    /// Mirror URL (http/https) or local directory the archives are taken from.
    #[arg(long, value_name = "URL_OR_DIR")]
    pub from: String,
    /// Directory to lay the local mirror out in.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Cache of verified archives (default: ~/.cache/cygvm/cygwin).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Packages to install (the Base category is always added).
    #[arg(required = true, value_name = "PKG")]
    pub packages: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MediaArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Directory to write the media to (default: the image's media/ directory).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the media manifest as JSON.
    #[arg(long)]
    pub json: bool,
    /// List the images (index, name, edition id) of `guest.iso` and write nothing.
    #[arg(long)]
    pub list_editions: bool,
}

fn push(args: &PushArgs) -> Result<ExitCode> {
    args.events.enable("push")?;
    let target = crate::registry::Reference::parse(&args.target)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let phase = crate::events::phase("push");
    let pushed = crate::registry::push(&crate::registry::PushOptions {
        image: args.image.clone(),
        target,
        plain_http: args.registry.plain_http,
        slice_bytes: args.slice_size.max(1) << 20,
        jobs: args.jobs.unwrap_or(cores),
    })?;
    crate::events::emit(
        "pushed",
        serde_json::json!({
            "reference": pushed.pinned.to_string(),
            "layers": pushed.layers,
            "bytes": pushed.total_bytes,
            "skipped_layers": pushed.skipped_layers,
            "skipped_bytes": pushed.skipped_bytes,
            "tags": pushed.tags,
        }),
    );
    phase.done();
    let human = crate::registry::progress::human_bytes;
    eprintln!(
        "pushed {} layers, {}: {} ({} layers) were already in the registry; tags {}",
        pushed.layers,
        human(pushed.total_bytes),
        human(pushed.skipped_bytes),
        pushed.skipped_layers,
        pushed.tags.join(", ")
    );
    println!("{}", pushed.pinned);
    Ok(ExitCode::SUCCESS)
}

fn report_pull(pulled: &crate::registry::Pulled) {
    let human = crate::registry::progress::human_bytes;
    if !pulled.fetched {
        eprintln!("{} is in the store already", pulled.pinned);
    } else if pulled.resumed_layers > 0 {
        eprintln!(
            "pulled {} ({}); resumed: {} layers were already in the store",
            pulled.pinned,
            human(pulled.fetched_bytes),
            pulled.resumed_layers
        );
    } else {
        eprintln!("pulled {} ({})", pulled.pinned, human(pulled.fetched_bytes));
    }
}

/// The image directory a run uses: `--image` itself, or the store's copy
/// of the artifact it names, pulled first if missing.
fn local_image(args: &RunArgs) -> Result<PathBuf> {
    use crate::registry::ImageSource;
    let Some(arg) = args.image.to_str() else {
        return Ok(args.image.clone());
    };
    match ImageSource::parse(arg)? {
        ImageSource::Local(p) => Ok(p),
        ImageSource::Registry(reference) => {
            let phase = crate::events::phase("pull");
            let pulled = crate::registry::pull(
                &reference,
                &crate::registry::PullOptions {
                    store: args.store.dir()?,
                    plain_http: args.registry.plain_http,
                    jobs: 4,
                    lines: false,
                },
            )?;
            crate::events::emit(
                "pulled",
                serde_json::json!({
                    "reference": pulled.pinned.to_string(),
                    "fetched": pulled.fetched,
                    "fetched_bytes": pulled.fetched_bytes,
                    "image_dir": pulled.image_dir,
                }),
            );
            phase.done();
            if pulled.fetched {
                report_pull(&pulled);
            }
            Ok(pulled.image_dir)
        }
    }
}

fn derived_cmd(cmd: DerivedCommand) -> Result<String> {
    use crate::derived::{DerivedStore, prune};
    let human = crate::registry::progress::human_bytes;
    let age = |t: std::time::SystemTime| {
        let secs = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        match secs {
            0..3600 => format!("{} min ago", secs / 60),
            3600..86400 => format!("{} h ago", secs / 3600),
            _ => format!("{} days ago", secs / 86400),
        }
    };
    match cmd {
        DerivedCommand::List { image } => {
            let image = crate::image::ImageDir::new(image);
            let mut out = String::new();
            for g in image.generations()? {
                for e in DerivedStore::of(&g).list() {
                    let packages: Vec<String> = e
                        .meta
                        .packages
                        .iter()
                        .map(|p| format!("{} {}", p.name, p.version))
                        .collect();
                    out.push_str(&format!(
                        "gen-{:04}/{}  {:>10}  used {}  made {} in {:.0} s\n  adds: {}\n  asked for: {}\n",
                        g.number,
                        e.meta.key,
                        human(e.disk_bytes),
                        age(e.last_used),
                        e.meta.created,
                        e.meta.build_seconds,
                        packages.join(", "),
                        e.meta.requested.join(" "),
                    ));
                }
            }
            if out.is_empty() {
                out = format!("{}: no derived generations\n", image.root.display());
            }
            Ok(out)
        }
        DerivedCommand::Prune { image, limits } => {
            let image = crate::image::ImageDir::new(image);
            let removed = prune(&image.generations()?, &limits.policy()?)?;
            let mut out = String::new();
            for (number, key, bytes) in &removed {
                out.push_str(&format!(
                    "removed gen-{number:04}/{key} ({})\n",
                    human(*bytes)
                ));
            }
            if removed.is_empty() {
                out.push_str("nothing to remove\n");
            }
            Ok(out)
        }
    }
}

fn store_cmd(cmd: StoreCommand) -> Result<String> {
    use crate::registry::store::Store;
    let human = crate::registry::progress::human_bytes;
    let (StoreCommand::List { store } | StoreCommand::Prune { store, .. }) = &cmd;
    let store = Store::new(store.dir()?);
    let describe = |e: &crate::registry::store::StoreEntry| {
        let what = match (&e.pulled_from, e.partial) {
            (_, true) => format!("{} (an unfinished pull)", e.digest),
            (Some(from), false) => from.clone(),
            (None, false) => e.digest.clone(),
        };
        format!("{what} ({})", human(e.disk_bytes))
    };
    match cmd {
        StoreCommand::List { .. } => {
            let entries = store.entries();
            let mut out = format!("{}\n", store.root.display());
            if entries.is_empty() {
                out.push_str("  no pulled images\n");
            }
            for e in &entries {
                out.push_str(&format!(
                    "  {}\n    last used {}, in {}\n",
                    describe(e),
                    crate::snapshot::manifest::rfc3339_utc(e.last_used),
                    e.dir.display()
                ));
            }
            Ok(out)
        }
        StoreCommand::Prune { limits, .. } => {
            let policy = limits.policy()?;
            let all = store
                .entries()
                .into_iter()
                .map(|e| crate::prune::Candidate {
                    last_used: e.last_used,
                    disk_bytes: e.disk_bytes,
                    item: e,
                })
                .collect();
            let removed = crate::prune::prune(all, &policy, |e| {
                let gone = store.remove(e)?;
                if !gone {
                    eprintln!("{} is in use; kept", describe(e));
                }
                Ok(gone)
            })?;
            let mut out = String::new();
            for c in &removed {
                out.push_str(&format!("removed {}\n", describe(&c.item)));
            }
            if removed.is_empty() {
                out.push_str("nothing to remove\n");
            }
            Ok(out)
        }
    }
}

/// Logs go to stderr; RUST_LOG selects the level (default: `default`).
pub fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

pub fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    // A run's stderr belongs to the guest command, and events on stderr
    // replace the progress lines: only warnings from cygvm.
    init_logging(match &cli.command {
        Command::Run(_) | Command::Cygport(_) => "warn",
        Command::Install(InstallArgs { events, .. })
        | Command::Refresh(RefreshArgs { events, .. })
            if events.on_stderr() =>
        {
            "warn"
        }
        _ => "info",
    });
    match cli.command {
        Command::Doctor(args) => crate::doctor::run(args.config.as_deref()),
        Command::Cygwin(CygwinCommand::Resolve(args)) => cygwin_cmd::resolve(&args),
        Command::Cygwin(CygwinCommand::Mirror(args)) => cygwin_cmd::mirror(&args),
        Command::Install(args) => {
            args.events.enable("install")?;
            let config = args.config.load()?;
            crate::phases::install::run(
                &config,
                &args.config.config,
                &crate::phases::install::InstallOptions {
                    keep_failed: args.keep_failed,
                },
            )
        }
        Command::Push(args) => push(&args),
        Command::Pull(args) => {
            args.events.enable("pull")?;
            let reference = crate::registry::Reference::parse(&args.reference)?;
            let phase = crate::events::phase("pull");
            let pulled = crate::registry::pull(
                &reference,
                &crate::registry::PullOptions {
                    store: args.store.dir()?,
                    plain_http: args.registry.plain_http,
                    jobs: args.jobs,
                    lines: true,
                },
            )?;
            crate::events::emit(
                "pulled",
                serde_json::json!({
                    "reference": pulled.pinned.to_string(),
                    "fetched": pulled.fetched,
                    "fetched_bytes": pulled.fetched_bytes,
                    "image_dir": pulled.image_dir,
                }),
            );
            phase.done();
            report_pull(&pulled);
            println!("{}", pulled.image_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            args.events.enable("run")?;
            let mut request = crate::derived::request::PackageRequest::default();
            if !args.packages.is_empty() {
                request.add("--packages", &args.packages);
            }
            if let Some(input) = &args.input
                && let Some((file, names)) = crate::derived::request::read_project_file(input)?
            {
                request.add(&file.display().to_string(), &names);
            }
            let opts = crate::phases::run::RunOptions {
                image: local_image(&args)?,
                input: args.input,
                output: args.output,
                keep_failed: args.keep_failed,
                cold: args.cold,
                command: args.command,
            };
            if request.is_empty() {
                crate::phases::run::run(&opts)
            } else {
                crate::phases::derive::run(&opts, &request)
            }
        }
        Command::Cygport(args) => {
            crate::phases::cygport::run(&crate::phases::cygport::CygportOptions {
                image: args.image,
                cygport: args.cygport,
                output: args.output,
                packages: args.packages,
                steps: args.steps,
                keep_failed: args.keep_failed,
            })
        }
        Command::Derived(cmd) => {
            print!("{}", derived_cmd(cmd)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Store(cmd) => {
            print!("{}", store_cmd(cmd)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Refresh(args) => {
            args.events.enable("refresh")?;
            crate::phases::refresh::run(&crate::phases::refresh::RefreshOptions {
                image: args.image,
                keep_failed: args.keep_failed,
                command: args.command,
            })
        }
        Command::Cache(cmd) => {
            let root = crate::cache::root();
            print!(
                "{}",
                match cmd {
                    CacheCommand::List => crate::cache::list(&root),
                    CacheCommand::Verify => crate::cache::verify(&root)?,
                    CacheCommand::Remove { names, all } =>
                        crate::cache::remove(&root, &names, all)?,
                    CacheCommand::Prune { unused_for } => crate::cache::prune(
                        &root,
                        unused_for.map(|d| std::time::Duration::from_secs(d * 86400))
                    ),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            crate::agent::server::run(&args.port, args.config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Media(args) => {
            let config = args.config.load()?;
            if args.list_editions {
                print!("{}", crate::media::windows_iso::list_images(&config)?);
                return Ok(ExitCode::SUCCESS);
            }
            let image = crate::media::windows_iso::check_windows_iso(&config)?;
            crate::media::run(&config, args.out.as_deref(), args.json, image.as_ref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
