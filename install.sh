#!/bin/bash
# Install qwamos-hooks on a Debian 12 host (run as root). Idempotent.
#
#   ./install.sh              install or upgrade
#   ./install.sh --uninstall  remove what install.sh put in place
#
# What it does:
#   - system packages (libvirt, QEMU, nftables and the Python bindings, TPM stack)
#   - a venv at $QWAMOS_PREFIX/venv (default /opt/qwamos) made from /usr/bin/python3
#     with system site packages, so Debian's libvirt and nftables bindings are seen
#   - the package itself into that venv
#   - /etc/qwamos/policy.yaml, only if absent (never overwritten)
#   - the hook as /etc/libvirt/hooks/qemu.d/50-qwamos (never touches hooks/qemu)
#   - our nftables tables, the watcher's systemd unit (not started), bash completion
#   - then SIGHUP to a running libvirtd so it sees the hook
#
# Environment: QWAMOS_SKIP_APT=1 skips the package step (already installed),
# QWAMOS_PREFIX moves the venv, QWAMOS_HOOK_NAME renames the hook file,
# QWAMOS_EDITABLE=1 installs the checkout in place.
set -euo pipefail

src=$(cd "$(dirname "$0")" && pwd)
prefix=${QWAMOS_PREFIX:-/opt/qwamos}
venv=$prefix/venv
hookdir=/etc/libvirt/hooks/qemu.d
hook=$hookdir/${QWAMOS_HOOK_NAME:-50-qwamos}
etc=/etc/qwamos
marker="# qwamos-hooks hook: installed by install.sh"

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root"

hup_libvirtd() {
  # libvirtd reads hooks/qemu.d/ only at start or on SIGHUP.
  local pid
  for pid in $(pgrep -x libvirtd || true); do
    kill -HUP "$pid" && say "sent SIGHUP to libvirtd (pid $pid)"
  done
}

ours() { [ "$(readlink "$1" 2>/dev/null)" = "$venv/bin/$(basename "$1")" ]; }

if [ "${1:-}" = "--uninstall" ]; then
  if [ -f "$hook" ] && grep -qF "$marker" "$hook"; then
    rm -f "$hook" && say "removed $hook"
  fi
  ours /usr/local/bin/qwamos-policy && rm -f /usr/local/bin/qwamos-policy
  # Host-wide pieces go with the last installation of the hook, not before:
  # another prefix may still be installed and enforcing.
  if grep -qlF "$marker" "$hookdir"/* 2>/dev/null; then
    say "another qwamos hook is still installed: kept the nftables tables, policy and unit"
  else
    if [ -x "$venv/bin/qwamos-policy" ]; then
      "$venv/bin/qwamos-policy" fw uninstall >/dev/null 2>&1 && say "removed nftables tables" || true
    fi
    if [ -f "$etc/policy.yaml" ] && cmp -s "$etc/policy.yaml" "$src/qwamos_hooks/data/default.yaml"; then
      rm -f "$etc/policy.yaml" && say "removed unmodified $etc/policy.yaml"
    elif [ -f "$etc/policy.yaml" ]; then
      say "kept $etc/policy.yaml (it differs from this version's default policy)"
    fi
    rmdir "$etc" 2>/dev/null || true
    rm -f /etc/bash_completion.d/qwamos-policy
    if [ -f /etc/systemd/system/qwamos-watch.service ]; then
      systemctl disable --now qwamos-watch 2>/dev/null || true
      rm -f /etc/systemd/system/qwamos-watch.service
      systemctl daemon-reload 2>/dev/null || true
    fi
  fi
  rm -rf "$venv" && say "removed $venv"
  rmdir "$prefix" 2>/dev/null || true
  say "kept the audit log and sealed keys in /var/lib/qwamos (remove by hand if wanted)"
  hup_libvirtd
  exit 0
fi
[ -z "${1:-}" ] || die "unknown argument '$1' (use --uninstall or nothing)"

. "$src/scripts/host-deps.sh"
if [ "${QWAMOS_SKIP_APT:-0}" != 1 ]; then
  missing=$(for p in $QWAMOS_RUNTIME_PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
  if [ -n "$missing" ]; then
    say "installing packages: $(echo $missing)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
  fi
fi

[ -x /usr/bin/python3 ] || die "/usr/bin/python3 is missing"
if [ ! -x "$venv/bin/python3" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  say "created $venv"
fi
# QWAMOS_EDITABLE=1 installs the checkout in place (for working on the code).
editable=; [ "${QWAMOS_EDITABLE:-0}" = 1 ] && editable=-e
"$venv/bin/python3" -m pip install -q --disable-pip-version-check --no-warn-script-location $editable "$src[tpm,crypto,net]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
"$venv/bin/python3" -c "import qwamos_hooks.hook, nftables, libvirt" \
  || die "the venv cannot import qwamos_hooks, nftables or libvirt"
say "installed qwamos-hooks $("$venv/bin/python3" -c 'import qwamos_hooks; print(qwamos_hooks.__version__)') into $venv"
link=/usr/local/bin/qwamos-policy
if [ ! -e "$link" ] || ours "$link"; then
  ln -sfn "$venv/bin/qwamos-policy" "$link"
else
  say "left $link alone (it belongs to another installation); use $venv/bin/qwamos-policy"
fi

install -d -m 0755 "$etc"
if [ ! -e "$etc/policy.yaml" ]; then
  install -m 0644 "$src/qwamos_hooks/data/default.yaml" "$etc/policy.yaml"
  say "wrote $etc/policy.yaml (the built-in default policy)"
else
  if cmp -s "$etc/policy.yaml" "$src/qwamos_hooks/data/default.yaml"; then
    say "kept existing $etc/policy.yaml (same as this version's default)"
  else
    say "kept existing $etc/policy.yaml (differs from this version's default: compare with $src/policies/default.yaml)"
  fi
  "$venv/bin/qwamos-policy" policy validate "$etc/policy.yaml" >/dev/null \
    || say "WARNING: $etc/policy.yaml is invalid: every VM start will be refused until it is fixed"
fi
install -d -m 0700 /var/lib/qwamos

install -d -m 0755 "$hookdir"
if [ -e /etc/libvirt/hooks/qemu ]; then
  say "leaving the existing /etc/libvirt/hooks/qemu alone (libvirt runs it before qemu.d/)"
fi
# The hook is a new process at every VM event. -I: no user site, no PYTHON*
# variables, no script folder on sys.path. -S: no site processing (it doubles
# interpreter start-up), so the import path the venv would build is written in.
syspath=$("$venv/bin/python3" -c '
import sys
paths = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
if len(sys.argv) > 1:
    paths.insert(0, sys.argv[1])
print(repr(paths))' ${editable:+"$src"})
tmp=$(mktemp "$hookdir/.qwamos.XXXXXX")
cat >"$tmp" <<EOF
#!$venv/bin/python3 -IS
$marker; policy in $etc/policy.yaml
import sys
sys.path += $syspath
from qwamos_hooks.hook import main
raise SystemExit(main())
EOF
chmod 0755 "$tmp"
mv -f "$tmp" "$hook"
say "installed hook $hook"

# One transaction: creates our tables, or rebuilds them (re-registering running
# VMs) when an upgrade changed their layout.
"$venv/bin/qwamos-policy" fw init --rebuild >/dev/null || die "could not create the nftables tables"
say "nftables tables in place (inet qwamos, bridge qwamos)"
# The watcher enforces the policy on devices hot-plugged into running VMs
# (libvirt runs no hook for those). It is a daemon: installed, not started.
if [ -d /run/systemd/system ]; then
  install -m 0644 "$src/contrib/qwamos-watch.service" /etc/systemd/system/qwamos-watch.service
  systemctl daemon-reload
  say "installed qwamos-watch.service; enable it with: systemctl enable --now qwamos-watch"
else
  say "no systemd: run '$venv/bin/qwamos-policy watch' under your service manager (docs/watch.md)"
fi
bash_completion=/etc/bash_completion.d
[ -d "$bash_completion" ] && install -m 0644 "$src/contrib/completion/qwamos-policy.bash" "$bash_completion/qwamos-policy"
hup_libvirtd
say "done"
