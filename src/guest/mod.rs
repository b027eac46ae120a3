//! What differs between a Windows guest and the linux-standin lives here,
//! and only here: shell wrapper, share mapping, clock, shutdown, install
//! status and log locations. Both get the devices of the configured Windows
//! version (`devices`); the stand-in's installer ISO is `installer_iso`.
//! Every orchestration phase is the same code for both.

pub mod devices;
pub mod installer_iso;

use std::net::Ipv4Addr;

use crate::config::{Config, GuestOsKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestOs {
    Windows,
    Standin,
}

/// A guest command line, shell-quoted for POSIX sh and bash.
pub fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

pub fn quote_argv(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// A command for the guest, with what to feed its stdin (secrets go there,
/// never on a command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCommand {
    pub command: String,
    pub stdin: Option<String>,
}

/// Cygwin setup's "installed, reboot to finish" exit status
/// (IDS_REBOOT_REQUIRED).
pub const UPDATE_NEEDS_REBOOT: i32 = 118;

/// The Cygwin helper that re-establishes the share mappings in an SSH
/// logon session (key logons carry no network credentials on Windows).
const WINDOWS_SHARES_HELPER: &str = "/usr/local/bin/cygvm-shares";

impl GuestOs {
    pub fn from_config(config: &Config) -> Self {
        match config.guest.os {
            GuestOsKind::Windows => GuestOs::Windows,
            GuestOsKind::LinuxStandin => GuestOs::Standin,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GuestOs::Windows => "Windows",
            GuestOs::Standin => "linux-standin",
        }
    }

    /// Wraps a user's argv so it runs in the guest's shell in `/outputs`,
    /// with the shares reachable.
    pub fn shell_command(self, argv: &[String]) -> String {
        let run = format!("cd /outputs && exec {}", quote_argv(argv));
        match self {
            GuestOs::Standin => run,
            GuestOs::Windows => format!(
                "exec bash -l -c {}",
                quote(&format!("{WINDOWS_SHARES_HELPER} >/dev/null 2>&1; {run}"))
            ),
        }
    }

    /// Maps the controller's shares at /inputs (read-only) and /outputs.
    pub fn mount_shares(self, controller: Ipv4Addr, user: &str, password: &str) -> GuestCommand {
        match self {
            GuestOs::Standin => GuestCommand {
                command: format!("cygvm-mount-shares {controller}"),
                stdin: Some(format!("username={user}\npassword={password}\n")),
            },
            GuestOs::Windows => GuestCommand {
                command: format!(
                    "exec bash -l -c {}",
                    quote(&windows_share_script(controller, user))
                ),
                stdin: Some(format!("{password}\n")),
            },
        }
    }

    /// Sets the guest clock to `unix_secs` (UTC).
    ///
    /// On Windows this is Cygwin's `date`: `date -s` ends in Cygwin's
    /// `settimeofday`, which calls `SetSystemTime` with the UTC time, and
    /// `SetSystemTime` enables the SE_SYSTEMTIME_NAME privilege itself. It
    /// needs no PowerShell, which XP and 2003 lack, and no .NET 4.6
    /// (`DateTimeOffset.FromUnixTimeSeconds`), which Windows 7, 8.1 and
    /// Server 2012 R2 do not ship.
    pub fn set_clock(self, unix_secs: u64) -> String {
        match self {
            GuestOs::Standin | GuestOs::Windows => format!("date -u -s @{unix_secs} >/dev/null"),
        }
    }

    /// Powers the guest off cleanly; the SSH connection drops with it.
    pub fn poweroff(self) -> String {
        match self {
            GuestOs::Standin => "sync; (sleep 1; poweroff -f) >/dev/null 2>&1 &".into(),
            // Windows' own shutdown.exe by its full path: Cygwin's
            // `shutdown` package puts a Linux-style /usr/bin/shutdown ahead
            // of System32 in PATH, and that one takes `/s` for a time.
            GuestOs::Windows => r#""$(cygpath -S)/shutdown.exe" /s /t 2 /f"#.into(),
        }
    }

    /// The default refresh: Cygwin's setup upgrading the installed packages
    /// and adding the configured ones, from the verified mirror the host
    /// puts at /inputs/mirror (with the installer beside it). The
    /// stand-in, which has no Cygwin, records the mirror's index instead, so
    /// a refresh is seen in the guest the same way.
    ///
    /// On Windows setup runs with the flags the install ran it with for
    /// this Windows version (`media::unattend::setup_flags`), which
    /// firstlogon.cmd recorded in the guest, plus `-g` (upgrade). Images
    /// made before that record existed ran the flags of current Windows.
    pub fn update_command(self, installer: &str, root: &str, packages: &[String]) -> String {
        match self {
            GuestOs::Windows => format!(
                "exec bash -l -c {}",
                quote(&format!(
                    "if [ -s {record} ]; then flags=$(tr -d '\\r' < {record}); else flags={default}; fi; \
                     cd /inputs && ./{} $flags -g -l \"$(cygpath -w /inputs/mirror)\" -R {} -P {}",
                    quote(installer),
                    quote(root),
                    quote(&packages.join(",")),
                    record = crate::media::unattend::SETUP_FLAGS_RECORD,
                    default = quote(crate::media::unattend::SETUP_FLAGS),
                ))
            ),
            GuestOs::Standin => {
                "mkdir -p ~/cygwin && cp /inputs/mirror/x86_64/setup.ini ~/cygwin/setup.ini".into()
            }
        }
    }

    /// Installs `packages` with Cygwin's setup in local mode from the
    /// verified mirror the host puts at /inputs/mirror, the installer
    /// beside it: what a derived generation adds to its parent. Setup runs
    /// with the flags the install recorded (see `update_command`), without
    /// `-g`: installed packages stay as they are.
    ///
    /// The stand-in's setup is a shell script; its Cygwin root sees C: at
    /// /cygdrive/c, and the mirror is given to it as drive I:.
    pub fn install_packages_command(
        self,
        installer: &str,
        root: &str,
        packages: &[String],
    ) -> String {
        let record = crate::media::unattend::SETUP_FLAGS_RECORD;
        let default = quote(crate::media::unattend::SETUP_FLAGS);
        match self {
            GuestOs::Windows => format!(
                "exec bash -l -c {}",
                quote(&format!(
                    "if [ -s {record} ]; then flags=$(tr -d '\\r' < {record}); else flags={default}; fi; \
                     cd /inputs && ./{} $flags -l \"$(cygpath -w /inputs/mirror)\" -R {} -P {}",
                    quote(installer),
                    quote(root),
                    quote(&packages.join(",")),
                ))
            ),
            GuestOs::Standin => format!(
                "if [ -s {record} ]; then flags=$(tr -d '\\r' < {record}); else flags={default}; fi; \
                 CYGVM_DRIVES='C=/cygdrive/c I=/inputs' sh /inputs/{} $flags -l 'I:\\mirror' -R {} -P {}",
                quote(installer),
                quote(root),
                quote(&packages.join(",")),
            ),
        }
    }

    /// Writes the guest's cached file data to its disk, so the disk alone
    /// (a `--cold` boot) holds what the memory snapshot holds. Cygwin's
    /// sync flushes every Windows volume.
    pub fn flush_disks(self) -> String {
        "sync".into()
    }

    /// Restarts the guest (after an update that asks for it).
    pub fn reboot(self) -> String {
        match self {
            GuestOs::Standin => "sync; (sleep 1; reboot -f) >/dev/null 2>&1 &".into(),
            // System32's shutdown.exe by path, for the reason poweroff gives.
            GuestOs::Windows => r#""$(cygpath -S)/shutdown.exe" /r /t 2 /f"#.into(),
        }
    }

    /// Prints the install's status line: `ok` or `failed: <step>`.
    pub fn install_status(self) -> String {
        // The stand-in's shell sees C: at /cygdrive/c too, from its Cygwin root.
        "cat /cygdrive/c/cygvm/status.txt".into()
    }

    /// Where the guest keeps its install logs, for error messages.
    pub fn log_locations(self) -> &'static str {
        match self {
            GuestOs::Standin => {
                r"the guest's serial log, and C:\cygvm\status.txt and install.log on its disk (/cygdrive/c/cygvm in its shell)"
            }
            GuestOs::Windows => {
                r"the guest's C:\cygvm\status.txt and install.log, C:\cygvm\setup.log.full (Cygwin setup), and Windows Setup's setuperr.log and setupact.log in C:\$WINDOWS.~BT\Sources\Panther, C:\Windows\Panther and C:\Windows\Panther\UnattendGC (see docs/windows.md for reading them from the disk image)"
            }
        }
    }
}

/// Cygwin script (password on stdin) that connects both shares with
/// explicit credentials, mounts them at /inputs and /outputs through
/// /etc/fstab, and installs the helper later SSH sessions call to connect
/// again: a key logon's token has no network credentials, and `net use`
/// connections belong to one logon session.
///
/// `/persistent:yes` is kept for the record but remembers nothing here:
/// Windows remembers only connections that redirect a local device, not
/// deviceless ones. `net config server /autodisconnect:-1` configures the
/// guest's own Server service (sessions of clients *of the guest*), not the
/// guest's connections to the controller; it is best effort and must not
/// fail the mapping where that service is stopped.
fn windows_share_script(controller: Ipv4Addr, user: &str) -> String {
    let user = quote(user);
    format!(
        r#"set -e
IFS= read -r pw
umask 077
mkdir -p ~/.cygvm
printf '%s' "$pw" > ~/.cygvm/samba_password
cat > {helper} <<'CYGVM_HELPER'
#!/bin/bash
# Maps the cygvm shares in this logon session when they are not reachable.
ls /inputs/ >/dev/null 2>&1 && exit 0
pw=$(cat ~/.cygvm/samba_password)
for s in inputs outputs; do
  net use "\\\\{controller}\\$s" "$pw" /user:{user} /persistent:yes >/dev/null 2>&1 || true
done
CYGVM_HELPER
chmod 755 {helper}
for s in inputs outputs; do
  net use "\\\\{controller}\\$s" /delete /y >/dev/null 2>&1 || true
  net use "\\\\{controller}\\$s" "$pw" /user:{user} /persistent:yes
done
net config server /autodisconnect:-1 >/dev/null 2>&1 || true
for s in inputs outputs; do
  mkdir -p "/$s"
  grep -q " /$s " /etc/fstab || echo "//{controller}/$s /$s ntfs binary,noacl,posix=0 0 0" >> /etc/fstab
done
mount -a
ls /inputs/ >/dev/null
"#,
        helper = WINDOWS_SHARES_HELPER,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        let argv: Vec<String> = ["sh", "-c", "echo 'hi' > /outputs/x; exit 3", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let quoted = quote_argv(&argv);
        assert_eq!(quoted, r#"sh -c 'echo '\''hi'\'' > /outputs/x; exit 3' ''"#);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s|' {quoted}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "sh|-c|echo 'hi' > /outputs/x; exit 3||"
        );
    }

    #[test]
    fn commands_start_in_outputs() {
        let argv = vec!["make".to_string(), "all".to_string()];
        assert_eq!(
            GuestOs::Standin.shell_command(&argv),
            "cd /outputs && exec make all"
        );
        let win = GuestOs::Windows.shell_command(&argv);
        assert!(win.starts_with("exec bash -l -c '"), "{win}");
        assert!(win.contains("cd /outputs && exec make all"), "{win}");
    }

    #[test]
    fn share_passwords_travel_on_stdin() {
        for os in [GuestOs::Standin, GuestOs::Windows] {
            let c = os.mount_shares(Ipv4Addr::new(192, 168, 0, 2), "cygvm", "s3cret");
            assert!(!c.command.contains("s3cret"), "{os:?}: {}", c.command);
            assert!(c.stdin.unwrap().contains("s3cret"));
        }
        let win = GuestOs::Windows.mount_shares(Ipv4Addr::new(192, 168, 0, 2), "cygvm", "x");
        assert!(
            win.command.contains(r"\\\\192.168.0.2\\$s"),
            "{}",
            win.command
        );
        assert!(win.command.contains("/persistent:yes"));
        assert!(win.command.contains("/autodisconnect:-1"));
    }

    #[test]
    fn the_windows_clock_needs_neither_powershell_nor_dotnet_4_6() {
        // PowerShell is missing on XP/2003, and FromUnixTimeSeconds needs
        // .NET 4.6, which 7, 8.1 and Server 2012 R2 do not ship.
        let win = GuestOs::Windows.set_clock(1_700_000_000);
        assert!(!win.contains("powershell"), "{win}");
        assert!(!win.contains("FromUnixTimeSeconds"), "{win}");
        assert_eq!(win, "date -u -s @1700000000 >/dev/null");
    }

    #[test]
    fn the_windows_poweroff_is_the_system32_shutdown() {
        // A bare `shutdown` finds Cygwin's /usr/bin/shutdown first when the
        // `shutdown` package is installed.
        let cmd = GuestOs::Windows.poweroff();
        assert!(
            cmd.starts_with(r#""$(cygpath -S)/shutdown.exe" /s "#),
            "{cmd}"
        );
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &cmd])
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    #[test]
    fn the_windows_reboot_is_the_system32_shutdown() {
        // Cygwin's /usr/bin/shutdown would take `/r` for a time and fail.
        let cmd = GuestOs::Windows.reboot();
        assert_eq!(cmd, r#""$(cygpath -S)/shutdown.exe" /r /t 2 /f"#);
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &cmd])
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    /// Runs the Windows update command with stand-ins for setup and
    /// cygpath, the inputs share and the flags record in a temp directory;
    /// returns the arguments setup got.
    fn update_argv(record: Option<&str>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let inputs = dir.path().join("inputs");
        std::fs::create_dir_all(&inputs).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = |path: &std::path::Path, text: &str| {
            std::fs::write(path, text).unwrap();
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        exe(
            &inputs.join("setup-x86_64.exe"),
            "#!/bin/sh\nprintf '%s\\n' \"$*\"\n",
        );
        exe(
            &bin.join("cygpath"),
            "#!/bin/sh\nprintf '%s\\n' 'E:\\mirror'\n",
        );
        let record_path = dir.path().join("setup-flags.txt");
        if let Some(text) = record {
            std::fs::write(&record_path, text).unwrap();
        }
        let cmd = GuestOs::Windows
            .update_command(
                "setup-x86_64.exe",
                r"C:\cygwin64",
                &["openssh".into(), "make".into()],
            )
            .replace("bash -l -c", "bash -c")
            .replace(
                crate::media::unattend::SETUP_FLAGS_RECORD,
                record_path.to_str().unwrap(),
            )
            .replace("/inputs", inputs.to_str().unwrap());
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let out = std::process::Command::new("bash")
            .args(["-c", &cmd])
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn the_windows_update_runs_setup_with_the_installs_flags() {
        // firstlogon.cmd wrote the Windows 7 flags (cmd's CRLF included).
        assert_eq!(
            update_argv(Some("-q -L -n -N -d -X --allow-unsupported-windows\r\n")),
            r"-q -L -n -N -d -X --allow-unsupported-windows -g -l E:\mirror -R C:\cygwin64 -P openssh,make"
        );
        // An image from before the record: the flags of current Windows.
        assert_eq!(
            update_argv(None),
            r"-q -L -n -N -d -X -g -l E:\mirror -R C:\cygwin64 -P openssh,make"
        );
    }

    #[test]
    fn the_server_autodisconnect_setting_cannot_fail_the_mapping() {
        let script = windows_share_script(Ipv4Addr::new(192, 168, 0, 2), "cygvm");
        let line = script
            .lines()
            .find(|l| l.starts_with("net config server"))
            .unwrap();
        assert!(line.ends_with("|| true"), "{line}");
    }

    #[test]
    fn the_windows_share_script_is_valid_bash() {
        let script = windows_share_script(Ipv4Addr::new(192, 168, 0, 2), "cygvm");
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
