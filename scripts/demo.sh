#!/bin/bash
# The main job, end to end on this host: two small TCG VMs go through
# `virsh start` with the installed hook and the policy in force (the built-in
# default when /etc/qwamos/policy.yaml is the shipped copy or absent). One is
# compliant and runs; one hides a NIC in <qemu:commandline> and is refused.
# Then the offline linter checks the same XML, and the audit chain is verified.
# The demo VMs are removed at the end (--keep leaves them defined).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
qp=${QWAMOS_POLICY_BIN:-/opt/qwamos/venv/bin/qwamos-policy}
keep=0; [ "${1:-}" = "--keep" ] && keep=1
V=(virsh -c qemu:///system)

step() { printf '\n== %s\n' "$*"; }
cleanup() {
  for n in qwamos-demo-ok qwamos-demo-bad; do
    "${V[@]}" destroy "$n" >/dev/null 2>&1
    "${V[@]}" undefine "$n" >/dev/null 2>&1
  done
}
[ "$keep" = 1 ] || trap cleanup EXIT
cleanup

step "policy in force"
if [ -f /etc/qwamos/policy.yaml ]; then "$qp" policy validate /etc/qwamos/policy.yaml; else echo "built-in default (no /etc/qwamos/policy.yaml)"; fi

step "virsh start of a compliant VM (virtio + vhost on libvirt's default network)"
"${V[@]}" define "$here/examples/domains/web-ok.xml" >/dev/null
"${V[@]}" start qwamos-demo-ok || { echo "demo: the compliant VM did not start" >&2; exit 1; }
"${V[@]}" domstate qwamos-demo-ok

step "virsh start of a VM with an e1000 NIC, a foreign MAC and a NIC hidden in <qemu:commandline>"
"${V[@]}" define "$here/examples/domains/sidechannel-bad.xml" >/dev/null
if "${V[@]}" start qwamos-demo-bad; then echo "demo: the non-compliant VM was NOT blocked" >&2; exit 1; fi
"${V[@]}" domstate qwamos-demo-bad

step "offline: qwamos-policy check examples/domains"
"$qp" check "$here/examples/domains"; echo "(exit code $?: 0 compliant, 1 violations, 2 input error)"

step "per-VM firewall of the running VM"
"$qp" fw show qwamos-demo-ok

step "audit trail"
tail -n 4 /var/lib/qwamos/audit.jsonl | cut -c1-160
"$qp" audit verify
