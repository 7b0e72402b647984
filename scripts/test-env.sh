#!/bin/bash
# Bring up what the test suite runs against on a Debian 12 host without
# systemd: system packages, virtlogd and libvirtd (started only if not already
# running), and libvirt's default NAT network. Idempotent. Run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/host-deps.sh"

if [ "${QWAMOS_SKIP_APT:-0}" != 1 ]; then
  missing=$(for p in $QWAMOS_RUNTIME_PKGS $QWAMOS_TEST_PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
  if [ -n "$missing" ]; then
    echo "test-env: installing: $(echo $missing)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
  fi
fi

# Delivered keys must live on tmpfs. On a systemd host /run is tmpfs; in a
# container it may not be, so give the state folder its own tmpfs there.
state=/run/qwamos
# Never mount over state a running VM depends on.
if [ "$(stat -f -c %T "$(dirname "$state")")" != tmpfs ] && ! mountpoint -q "$state" \
   && [ -z "$(find "$state" -type f 2>/dev/null | head -1)" ]; then
  install -d -m 0711 "$state"
  mount -t tmpfs -o mode=0711,size=64m qwamos-run "$state"
  echo "test-env: mounted a tmpfs on $state (/run is not tmpfs here)"
fi

clean_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin)
if ! pgrep -x virtlogd >/dev/null; then
  "${clean_env[@]}" virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  "${clean_env[@]}" libvirtd -d
fi
for _ in $(seq 1 100); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.1
done
virsh -c qemu:///system version >/dev/null || { echo "test-env: libvirtd did not come up" >&2; exit 1; }

# libvirt's default NAT network (virbr0): defined by the package, started here.
if ! virsh -c qemu:///system net-info default >/dev/null 2>&1; then
  virsh -c qemu:///system net-define /usr/share/libvirt/networks/default.xml >/dev/null
fi
info=$(virsh -c qemu:///system net-info default)
if ! grep -q '^Active: *yes' <<<"$info"; then
  virsh -c qemu:///system net-start default >/dev/null
fi
echo "test-env: libvirtd $(virsh -c qemu:///system version --daemon | sed -n 's/.*daemon: *//Ip' | head -1) up, network 'default' active"
