"""The firewall on the real libvirtd: `virsh start` of a TCG guest whose iPXE
sends DHCP on a bridge made for the test, through the installed hook.

The DHCP DISCOVER frames are counted by the VM's own chain, and seen (nat) or
not seen (isolated) by a packet socket on the bridge, which receives only what
the bridge lets through to the host. After `virsh destroy` no rule, map entry
or state record of the VM remains.
"""

import json
import os
import socket
import struct
import threading
import time
import uuid as uuidlib

import pytest

from . import e2e
from .domains import domain_xml, nic

BR = f"qwfwbr{os.getpid() % 10000}"
STATE_DIR = "/run/qwamos/fw"
POLICY = f"""version: 1
profiles:
  default: {{}}
  fw-nat:
    interfaces: {{allowed_bridges: [{BR}], allowed_types: [bridge]}}
    firewall: {{profile: nat}}
  fw-iso:
    interfaces: {{allowed_bridges: [{BR}], allowed_types: [bridge]}}
    firewall: {{profile: isolated}}
assign:
  - {{name: "qwtest-fw-nat-*", profile: fw-nat}}
  - {{name: "qwtest-fw-iso-*", profile: fw-iso}}
"""


def nft_json(*args):
    import subprocess

    p = subprocess.run(["nft", "-j", *args], capture_output=True, text=True)
    return json.loads(p.stdout)["nftables"] if p.returncode == 0 else []


def sh(*args):
    import subprocess

    p = subprocess.run(list(args), capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(args)}: {p.stderr}"


class DhcpSniffer:
    """Counts DHCP DISCOVER/REQUEST frames from one MAC that reach the bridge device."""

    def __init__(self, dev, mac):
        self.mac = bytes(int(x, 16) for x in mac.split(":"))
        self.seen = 0
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        self.sock.bind((dev, 0))
        self.sock.settimeout(0.2)
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                f = self.sock.recv(2048)
            except OSError:
                continue
            if f[6:12] != self.mac or len(f) < 42 or f[23] != 17:
                continue
            ihl = (f[14] & 0x0F) * 4
            sport, dport = struct.unpack("!HH", f[14 + ihl:18 + ihl])
            if (sport, dport) == (68, 67):
                self.seen += 1

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close()


@pytest.fixture(scope="module", autouse=True)
def host():
    e2e.require_host()
    swap = e2e.PolicySwap()
    swap.write(POLICY)
    sh("ip", "link", "add", BR, "type", "bridge")
    try:
        sh("ip", "link", "set", BR, "up")
        yield
    finally:
        import subprocess

        subprocess.run(["ip", "link", "del", BR], capture_output=True)
        swap.restore()


@pytest.fixture
def vm():
    names = []

    def define(kind, k):
        name = f"qwtest-fw-{kind}-{os.getpid()}-{k}"
        mac = f"52:54:00:fe:{os.getpid() % 256:02x}:{k:02x}"
        uuid = str(uuidlib.uuid4())
        e2e.define(name, domain_xml(name=name, uuid=uuid, memory_mib=128,
                                    nics=[nic("bridge", mac=mac, source=f"<source bridge='{BR}'/>")]))
        names.append(name)
        return name, uuid, mac

    yield define
    for n in names:
        e2e.cleanup(n)


def tap_of(name):
    p = e2e.virsh("domiflist", name, check=True)
    for line in p.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[2] == BR:
            return cols[0]
    raise AssertionError(f"no interface of {name} on {BR}: {p.stdout}")


def counters(tap):
    """The tap's packet counters in the bridge table: {acc_in, drop_in, acc_out, drop_out}."""
    out = {}
    for name in ("acc_in", "drop_in", "acc_out", "drop_out"):
        for o in nft_json("list", "set", "bridge", "qwamos", name):
            for e in (o.get("set") or {}).get("elem", []):
                if e["elem"]["val"] == tap:
                    out[name] = e["elem"]["counter"]["packets"]
    return out


def nothing_left(tap, uuid):
    text = json.dumps(nft_json("list", "table", "bridge", "qwamos")) + json.dumps(
        nft_json("list", "table", "inet", "qwamos"))
    return f'"{tap}' not in text and uuid not in text \
        and not os.path.exists(f"{STATE_DIR}/{uuid}.json")


@pytest.mark.parametrize("kind", ["nat", "iso"])
def test_ipxe_dhcp_is_counted_and_allowed_or_dropped(vm, kind):
    name, uuid, mac = vm(kind, 1)
    sniff = DhcpSniffer(BR, mac)
    try:
        p = e2e.virsh("start", name)
        assert p.returncode == 0, p.stderr
        tap = tap_of(name)
        with open(f"{STATE_DIR}/{uuid}.json") as fh:
            st = json.load(fh)
        assert st["profile"] == {"nat": "nat", "iso": "isolated"}[kind]
        assert [i["tap"] for i in st["interfaces"]] == [tap] and st["interfaces"][0]["bridge"] == BR
        if kind == "nat":
            assert e2e.wait_for(lambda: counters(tap).get("acc_in", 0) >= 1 and sniff.seen >= 1, 30), \
                f"no DHCP from iPXE counted/seen: {counters(tap)}, sniffed {sniff.seen}"
            assert counters(tap)["drop_in"] == 0
        else:
            assert e2e.wait_for(lambda: counters(tap).get("drop_in", 0) >= 2, 30), \
                f"no iPXE traffic dropped: {counters(tap)}"
            time.sleep(0.5)
            assert sniff.seen == 0, f"{sniff.seen} DHCP frames crossed an isolated VM's firewall"
            assert counters(tap)["acc_in"] == 0
    finally:
        sniff.close()
    assert e2e.virsh("destroy", name).returncode == 0
    assert e2e.wait_for(lambda: nothing_left(tap, uuid), 10), "rules or state left after virsh destroy"


def test_unregistered_tap_on_bridge_is_dropped():
    """The kill switch in the host's own tables: a vnet* port nobody registered."""
    import subprocess

    tap = f"vnet{os.getpid() % 100000}x"[:15]
    peer = f"qwfwp{os.getpid() % 100000}"
    sh("ip", "link", "add", tap, "type", "veth", "peer", "name", peer)
    try:
        sh("ip", "link", "set", tap, "master", BR, "up")
        sh("ip", "link", "set", peer, "up")
        before = _killswitch_packets()
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((peer, 0))
        for _ in range(3):
            s.send(b"\xff" * 6 + b"\x52\x54\x00\x00\x00\x99" + b"\x08\x06" + b"\0" * 28)
        s.close()
        assert e2e.wait_for(lambda: _killswitch_packets() >= before + 3, 3)
    finally:
        subprocess.run(["ip", "link", "del", tap], capture_output=True)


def _killswitch_packets():
    n = 0
    for o in nft_json("list", "chain", "bridge", "qwamos", "pre"):
        r = o.get("rule")
        if r and any(e.get("match", {}).get("right") == "vnet*" for e in r["expr"]):
            n += next(e["counter"]["packets"] for e in r["expr"] if "counter" in e)
    return n
