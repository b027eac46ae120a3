//! The first-logon files on the Cygwin ISO, under `cygvm/`.
//!
//! `firstlogon.cmd` and `bootstrap.sh` are fixed scripts kept readable in
//! `unattend/`; what differs per image goes into the small `config.cmd` and
//! `config.sh` next to them, from values checked before they are written.

use crate::config::Config;
use crate::media::unattend::{MediaContext, cygwin_root, installer_name, setup_flags};

const FIRSTLOGON_CMD: &str = include_str!("../../unattend/firstlogon.cmd");
const BOOTSTRAP_SH: &str = include_str!("../../unattend/bootstrap.sh");

/// Files for the ISO's `cygvm/` directory as (path on the ISO, contents).
/// cmd files get CRLF line ends: cmd.exe misreads labels in LF-only files.
pub fn bootstrap_files(ctx: &MediaContext) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "cygvm/firstlogon.cmd".into(),
            crlf(FIRSTLOGON_CMD).into_bytes(),
        ),
        (
            "cygvm/config.cmd".into(),
            crlf(&config_cmd(ctx)).into_bytes(),
        ),
        (
            "cygvm/bootstrap.sh".into(),
            BOOTSTRAP_SH.as_bytes().to_vec(),
        ),
        ("cygvm/config.sh".into(), config_sh(ctx.config).into_bytes()),
    ]
}

/// Variables for firstlogon.cmd. Every value is validated by the config
/// types or `check_context` to hold no cmd metacharacters.
pub fn config_cmd(ctx: &MediaContext) -> String {
    let c = ctx.config;
    let packages: Vec<&str> = c.cygwin.packages.iter().map(|p| p.name()).collect();
    let shutdown = if c.guest.version.uses_winnt_sif() {
        "shutdown.exe -s -t 0"
    } else {
        "shutdown.exe /s /t 0"
    };
    format!(
        "@rem Written by cygvm for this image; read by firstlogon.cmd.\n\
         set \"CYGVM_MARKER={marker}\"\n\
         set \"CYGVM_INSTALLER={installer}\"\n\
         set \"CYGVM_SETUP_FLAGS={flags}\"\n\
         set \"CYGVM_ROOT={root}\"\n\
         set \"CYGVM_PACKAGES={packages}\"\n\
         set \"CYGVM_SHUTDOWN={shutdown}\"\n",
        marker = ctx.marker_name,
        installer = installer_name(c.guest.version),
        flags = setup_flags(c.guest.version),
        root = cygwin_root(c),
        packages = packages.join(","),
    )
}

/// Variables for bootstrap.sh, single-quoted; none of the values can hold a
/// quote (user names, addresses and yes/no only).
pub fn config_sh(c: &Config) -> String {
    let net = &c.network;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    format!(
        "# Written by cygvm for this image; read by bootstrap.sh.\n\
         CYGVM_USER='{user}'\n\
         CYGVM_ADDRESS='{addr}'\n\
         CYGVM_NETMASK='{mask}'\n\
         CYGVM_NETWORK='{network}'\n\
         CYGVM_PREFIX='{prefix}'\n\
         CYGVM_DHCP='{dhcp}'\n\
         CYGVM_LEGACY='{legacy}'\n",
        user = c.guest.admin_user.0,
        addr = net.guest.addr,
        mask = net.guest.netmask(),
        network = net.guest.network(),
        prefix = net.guest.prefix,
        dhcp = yes_no(net.dhcp),
        legacy = yes_no(c.guest.version.uses_winnt_sif()),
    )
}

fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}
