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
    /// Write the install media: floppy.img, cygwin.iso, the answer file and a manifest.
    #[command(
        after_help = "Examples:\n  cygvm media --config cygvm.toml --out media\n  cygvm media --config cygvm.toml --list-editions\n\nWith `guest.iso` set, the configured `guest.edition` or `guest.index` is\nlooked up in the ISO's sources/install.wim (or install.esd) first; nothing\nis written if the ISO lacks it."
    )]
    Media(MediaArgs),
    /// The controller VM's agent (runs inside the controller, not on the host).
    #[command(hide = true)]
    Agent(AgentArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The virtio-serial port to the host.
    #[arg(long, default_value = "/dev/virtio-ports/cygvm.agent")]
    pub port: PathBuf,
    /// JSON file with the guest address, user, client key and pinned host key.
    #[arg(long)]
    pub config: PathBuf,
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
pub struct RunArgs {
    /// The image directory (images/<name>).
    #[arg(long, value_name = "DIR")]
    pub image: PathBuf,
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
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
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
        Command::Run(_) => "warn",
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
        Command::Run(args) => {
            args.events.enable("run")?;
            crate::phases::run::run(&crate::phases::run::RunOptions {
                image: args.image,
                input: args.input,
                output: args.output,
                keep_failed: args.keep_failed,
                cold: args.cold,
                command: args.command,
            })
        }
        Command::Refresh(args) => {
            args.events.enable("refresh")?;
            crate::phases::refresh::run(&crate::phases::refresh::RefreshOptions {
                image: args.image,
                keep_failed: args.keep_failed,
                command: args.command,
            })
        }
        Command::Agent(args) => {
            crate::agent::server::run(&args.port, &args.config)?;
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
