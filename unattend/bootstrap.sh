#!/bin/bash
# cygvm bootstrap: makes a fresh Cygwin reachable over SSH from the host.
# Run by firstlogon.cmd as the logged-on administrator:
#     bash --login X:\cygvm\bootstrap.sh X:
# It reads cygvm/config.sh from the same ISO, appends to C:\cygvm\install.log,
# and on any failure writes "failed: <step>" to C:\cygvm\status.txt.
# firstlogon.cmd powers the machine off afterwards, success or not.
set -eu

iso_win=${1:?usage: bootstrap.sh <drive of the Cygwin ISO, e.g. E:>}
iso=$(cygpath -u "${iso_win%\\}\\")
iso=${iso%/}
state=$(cygpath -u 'C:\cygvm')
mkdir -p "$state"
exec >>"$state/install.log" 2>&1

step=start
on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "[$(date '+%F %T')] bootstrap step $step failed (exit $rc)"
        echo "failed: $step" >"$state/status.txt"
    fi
}
trap on_exit EXIT
say() { echo "[$(date '+%F %T')] $*"; }

# The name ssh-host-config gave Cygwin's sshd service: `cygsshd` since
# OpenSSH 8.0, `sshd` before. `cygrunsrv -L` lists only services that run
# cygrunsrv itself, so Microsoft's own `sshd` (Server 2025) never matches,
# while `cygrunsrv -Q sshd` would find it too.
sshd_service() {
    local installed name
    installed=$(cygrunsrv -L | tr -d '\r')
    for name in cygsshd sshd; do
        if printf '%s\n' "$installed" | grep -qx "$name"; then
            echo "$name"
            return 0
        fi
    done
    say "no Cygwin sshd service after ssh-host-config; cygrunsrv -L lists:" $installed >&2
    return 1
}

step=read-config
# CYGVM_USER, CYGVM_ADDRESS, CYGVM_NETMASK, CYGVM_NETWORK, CYGVM_PREFIX,
# CYGVM_DHCP (yes/no), CYGVM_LEGACY (yes on XP/2003).
. "$iso/cygvm/config.sh"
sys=$(cygpath -S)
netsh=$sys/netsh.exe
say "bootstrap as $(id -un) for $CYGVM_USER, ISO at $iso"

step=password-policy
# Snapshots are revived long after they were made; expired passwords would
# lock out the sshd service account.
"$sys/net.exe" accounts /maxpwage:unlimited

step=authorized-keys
home=$(getent passwd "$CYGVM_USER" | cut -d: -f6 || true)
[ -n "$home" ] || home=/home/$CYGVM_USER
mkdir -p "$home/.ssh"
cp "$iso/cygvm/authorized_keys" "$home/.ssh/authorized_keys"
chown -R "$CYGVM_USER" "$home/.ssh" || [ "$(id -un)" = "$CYGVM_USER" ]
chmod go-w "$home"
chmod 700 "$home/.ssh"
chmod 600 "$home/.ssh/authorized_keys"

step=ssh-host-config
# sshd needs a privileged service account; its password never leaves the
# guest. The suffix meets Windows' complexity rule.
service_pw="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')Aa1-"
ssh-host-config --yes --user cyg_server --pwd "$service_pw"
unset service_pw

step=host-key
# Replace the generated key's content but keep the file, so the owner and
# ACL that ssh-host-config gave it stay. The host pins this key.
for f in ssh_host_ed25519_key ssh_host_ed25519_key.pub; do
    [ -f "/etc/$f" ] || { say "/etc/$f missing after ssh-host-config"; exit 1; }
    cat "$iso/cygvm/$f" >"/etc/$f"
done
chmod 600 /etc/ssh_host_ed25519_key
chmod 644 /etc/ssh_host_ed25519_key.pub
derived=$(ssh-keygen -y -f /etc/ssh_host_ed25519_key | cut -d' ' -f1-2)
shipped=$(cut -d' ' -f1-2 /etc/ssh_host_ed25519_key.pub)
[ "$derived" = "$shipped" ] || { say "host key and .pub do not match"; exit 1; }

step=sshd-start
service=$(sshd_service)
say "starting the $service service"
cygrunsrv -S "$service"
for _ in $(seq 30); do
    cygrunsrv -Q "$service" | grep -q 'Running' && break
    sleep 1
done
cygrunsrv -Q "$service" | grep -q 'Running'

step=firewall
# Port 22 from the private network only; the firewall stays on.
if [ "$CYGVM_LEGACY" = yes ]; then
    "$netsh" firewall add portopening protocol=TCP port=22 name=cygvm-sshd \
        mode=ENABLE scope=CUSTOM addresses="$CYGVM_NETWORK/$CYGVM_NETMASK"
else
    "$netsh" advfirewall firewall add rule name=cygvm-sshd dir=in action=allow \
        protocol=TCP localport=22 remoteip="$CYGVM_NETWORK/$CYGVM_PREFIX" profile=any
fi

step=network
if [ "$CYGVM_DHCP" = yes ]; then
    say "address by DHCP"
else
    # The adapter's name differs by version and language ("Ethernet",
    # "Local Area Connection", ...): take the one bound to TCP/IP,
    # preferring QEMU's MAC prefix 52-54-00.
    adapters=$("$sys/getmac.exe" /v /nh /fo csv | tr -d '\r' |
        awk -F'","' '$4 ~ /^\\Device\\Tcpip_/ { sub(/^"/, "", $1); print $3 "\t" $1 }')
    say "adapters bound to TCP/IP: $(echo "$adapters" | tr '\n' ';')"
    ifname=$(echo "$adapters" | awk -F'\t' '$1 ~ /^52-54-00/ { print $2; exit }')
    [ -n "$ifname" ] || ifname=$(echo "$adapters" | awk -F'\t' 'NF == 2 { print $2; exit }')
    [ -n "$ifname" ] || { say "no network adapter bound to TCP/IP"; exit 1; }
    say "static $CYGVM_ADDRESS/$CYGVM_PREFIX on \"$ifname\""
    if [ "$CYGVM_LEGACY" = yes ]; then
        "$netsh" interface ip set address name="$ifname" source=static \
            addr="$CYGVM_ADDRESS" mask="$CYGVM_NETMASK" gateway=none
    else
        "$netsh" interface ipv4 set address name="$ifname" source=static \
            address="$CYGVM_ADDRESS" mask="$CYGVM_NETMASK" gateway=none
    fi
    for _ in $(seq 30); do
        "$sys/ipconfig.exe" | grep -qF "$CYGVM_ADDRESS" && break
        sleep 1
    done
    "$sys/ipconfig.exe" | grep -qF "$CYGVM_ADDRESS"
fi

step=power
# A sleeping or hibernating guest would stop answering SSH.
if [ "$CYGVM_LEGACY" = yes ]; then
    "$sys/powercfg.exe" /hibernate off || say "warning: powercfg /hibernate off failed"
    # Scheme 3 is "Always On": no standby, no hibernation.
    "$sys/powercfg.exe" /setactive 3 /numerical || say "warning: powercfg /setactive failed"
else
    "$sys/powercfg.exe" /hibernate off
    "$sys/powercfg.exe" /change standby-timeout-ac 0
    "$sys/powercfg.exe" /change hibernate-timeout-ac 0
    "$sys/powercfg.exe" /change monitor-timeout-ac 0
fi

step=done
touch "$state/bootstrap.done"
echo ok >"$state/status.txt"
say "bootstrap finished"
