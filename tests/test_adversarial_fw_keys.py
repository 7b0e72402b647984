"""Adversarial tests of the per-VM firewall and the TPM-sealed keys.

Each test is an attack that works today and must stop working once fixed.
Firewall attacks run with real packets in network namespaces this module
creates (prefix qwadv2-) and deletes: a bridge in a "host" namespace holding
our nft tables, VMs on veth pairs named like libvirt taps, and a LAN peer.
Frames are crafted by hand (AF_PACKET) and the oracle is a raw sniffer on the
other side of the bridge: a frame seen there crossed our bridge filter.

    VMk ns: eth0 10.98.0.1k fd98::1k  ==veth==  vnetak  \\
                                                          br0 10.98.0.1 fd98::1 (host ns H)
    LAN ns: lan0 10.98.0.2 fd98::2    ==veth==  uplink0 /   routes 192.0.2.99 -> LAN

Run as a script, it is also the traffic tool the tests start inside the
namespaces (sniff / send / udp68 client / udp echo server).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid as uuidlib

try:
    from tests.netns_tools import NetnsVM, csum, run
except ImportError:  # run as a script inside a namespace: tests/ itself is sys.path[0]
    from netns_tools import NetnsVM, csum, run

PY = "/opt/qwamos/venv/bin/python"
HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
DRIVER = os.path.join(ROOT, "tests", "fw_driver.py")
SUF = f"{os.getpid() % 100000:05d}"
H, LAN = f"qwadv2-h{SUF}", f"qwadv2-l{SUF}"
TOR_GLOBAL = {"tor": {"address": "10.98.0.1", "address6": "fd98::1", "trans_port": 9040, "dns_port": 5353}}
REMOTE = "192.0.2.99"  # an off-link address the host routes to the LAN peer

ETH_P_ALL = 0x0003


# -- frame crafting (pure) ----------------------------------------------------------


def _mac(m: str) -> bytes:
    return bytes(int(x, 16) for x in m.split(":"))


def eth(dst: str, src: str, etype: int, payload: bytes, vlans=()) -> bytes:
    """Ethernet frame; vlans: [(tpid, vid)] outermost first (802.1Q 0x8100, 802.1ad 0x88a8)."""
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return _mac(dst) + _mac(src) + tags + struct.pack("!H", etype) + payload


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    sip, dip = socket.inet_aton(src), socket.inet_aton(dst)
    ulen = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0)
    cs = csum(sip + dip + struct.pack("!BBH", 0, 17, ulen) + udp + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, ulen, cs) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0, 64, 17, 0, sip, dip)
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + udp


def arp_reply(smac: str, sip: str, tmac: str, tip: str) -> bytes:
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + _mac(smac) + socket.inet_aton(sip) \
        + _mac(tmac) + socket.inet_aton(tip)


def _ip6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def _l4_csum6(src: str, dst: str, nh: int, body: bytes) -> int:
    pseudo = _ip6(src) + _ip6(dst) + struct.pack("!I3xB", len(body), nh)
    return csum(pseudo + body)


def ipv6(src: str, dst: str, nh: int, body: bytes, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB", 0x60000000, len(body), nh, hlim) + _ip6(src) + _ip6(dst) + body


def icmp6_ra(src: str, dst: str, tag: bytes) -> bytes:
    """Router advertisement body (type 134) with checksum, followed by a tag in
    an unknown option so a sniffer can recognise it."""
    opt_len = (2 + len(tag) + 7) // 8 * 8
    opt = bytes([253, opt_len // 8]) + tag + b"\0" * (opt_len - 2 - len(tag))
    body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + opt
    cs = _l4_csum6(src, dst, 58, body)
    return body[:2] + struct.pack("!H", cs) + body[4:]


def udp6(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    ulen = 8 + len(payload)
    body = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    cs = _l4_csum6(src, dst, 17, body) or 0xFFFF
    return body[:6] + struct.pack("!H", cs) + body[8:]


def hbh(nh: int) -> bytes:
    """An empty hop-by-hop / destination options header (PadN to 8 bytes)."""
    return bytes([nh, 0, 1, 4, 0, 0, 0, 0])


def frag6(nh: int, offset8: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nh, 0, (offset8 << 3) | int(more), ident)


# -- tool mode (runs inside a namespace) ------------------------------------------------


def _tool(argv):
    cmd = argv[0]
    if cmd == "send":  # send DEV HEXFRAME...
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((argv[1], 0))
        for h in argv[2:]:
            s.send(bytes.fromhex(h))
        return 0
    if cmd == "sniff":  # sniff DEV SECONDS TAG: prints the hex of frames holding TAG
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((argv[1], 0))
        s.settimeout(0.2)
        tag = argv[3].encode()
        end = time.monotonic() + float(argv[2])
        print("ready", flush=True)
        while time.monotonic() < end:
            try:
                data, addr = s.recvfrom(65535)
            except socket.timeout:
                continue
            if tag in data and addr[2] != socket.PACKET_OUTGOING:
                print(data.hex(), flush=True)
        return 0
    if cmd == "udpecho":  # udpecho ADDR PORT: answer every datagram with "echo:" + it
        fam = socket.AF_INET6 if ":" in argv[1] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((argv[1], int(argv[2])))
        print("ready", flush=True)
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(b"echo:" + data, peer)
    if cmd == "udpcall":  # udpcall SPORT ADDR DPORT TEXT: one datagram from SPORT, prints the answer
        fam = socket.AF_INET6 if ":" in argv[2] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(argv[1])))
        s.settimeout(1.5)
        for _ in range(2):
            try:
                s.sendto(argv[4].encode(), (argv[2], int(argv[3])))
                print(s.recvfrom(2048)[0].decode(), flush=True)
                return 0
            except OSError:
                continue
        print("FAIL", flush=True)
        return 0
    raise SystemExit(f"unknown tool command {cmd}")


if __name__ == "__main__":
    raise SystemExit(_tool(sys.argv[1:]))


import pytest  # noqa: E402  (not needed in tool mode)


# -- namespaces --------------------------------------------------------------------------


class VM(NetnsVM):
    def __init__(self, topo, k: int, mac: str | None = None):
        super().__init__(topo, H, DRIVER, ns=f"qwadv2-v{k}{SUF}", tap=f"vneta{k}{SUF}"[:15],
                         mac=mac or f"52:54:00:0a:d2:1{k}", ip4=f"10.98.0.1{k}", ip6=f"fd98::1{k}",
                         name=f"qwadv2-vm{k}", uuid=str(uuidlib.UUID(int=random.getrandbits(128))), gw4="10.98.0.1")
        self.k = k

    def send(self, *frames: bytes):
        run(PY, HERE, "send", "eth0", *[f.hex() for f in frames], ns=self.ns)

    def udpcall(self, sport, addr, dport, text):
        return run(PY, HERE, "udpcall", sport, addr, dport, text, ns=self.ns).stdout.strip()


class Topo:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.vms: dict[int, VM] = {}
        self.env = dict(os.environ, QWAMOS_STATE_DIR=os.path.join(tmp, "state"),
                        QWAMOS_LIB_DIR=os.path.join(tmp, "lib"), QWAMOS_LOG_FILE=os.path.join(tmp, "hook.log"))
        self.namespaces: list[str] = []

    def netns(self, name):
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "link", "set", "lo", "up", ns=name)

    def build(self):
        self.netns(H)
        self.netns(LAN)
        run("ip", "link", "add", "br0", "type", "bridge", ns=H)
        run("ip", "addr", "add", "10.98.0.1/24", "dev", "br0", ns=H)
        run("ip", "addr", "add", "fd98::1/64", "dev", "br0", "nodad", ns=H)
        run("ip", "link", "set", "br0", "up", ns=H)
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=H)
        run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "lan0", "netns", LAN, ns=H)
        run("ip", "link", "set", "uplink0", "master", "br0", "up", ns=H)
        run("ip", "addr", "add", "10.98.0.2/24", "dev", "lan0", ns=LAN)
        run("ip", "addr", "add", "fd98::2/64", "dev", "lan0", "nodad", ns=LAN)
        run("ip", "addr", "add", f"{REMOTE}/32", "dev", "lo", ns=LAN)
        run("ip", "link", "set", "lan0", "up", ns=LAN)
        run("ip", "route", "add", "default", "via", "10.98.0.1", ns=LAN)
        run("ip", "route", "add", f"{REMOTE}/32", "via", "10.98.0.2", ns=H)
        self.lan_mac = run("cat", "/sys/class/net/lan0/address", ns=LAN).stdout.strip()
        self.br_mac = run("cat", "/sys/class/net/br0/address", ns=H).stdout.strip()
        # An off-link "internet" service on the DHCP server port, answering anyone.
        self.serve(LAN, "udpecho", "0.0.0.0", 67)
        p = run(PY, DRIVER, "init", ns=H, check=False, env=self.env)
        assert p.returncode == 0, p.stderr
        for k in (1, 2):
            self.vms[k] = VM(self, k)
            self.namespaces.append(self.vms[k].ns)
            self.vms[k].create()

    def serve(self, ns, *args):
        p = subprocess.Popen(["ip", "netns", "exec", ns, PY, HERE, *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready", p.stderr.read()

    def sniff_during(self, ns, dev, tag, action, seconds=1.5) -> list[bytes]:
        """Frames holding `tag` seen on dev in ns while action() runs."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, PY, HERE, "sniff", dev, str(seconds), tag],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            action()
            out, _ = p.communicate(timeout=seconds + 10)
        finally:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        return [bytes.fromhex(x) for x in out.split()]

    def teardown(self):
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def nft(self, *args):
        return run("nft", *args, ns=H).stdout


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    assert os.geteuid() == 0, "network namespace tests need root"
    for tool in ("ip", "nft", "sysctl"):
        assert subprocess.run(["which", tool], capture_output=True).returncode == 0, f"{tool} is not installed"
    t = Topo(str(tmp_path_factory.mktemp("qwadv2")))
    try:
        t.build()
        yield t
    finally:
        t.teardown()


@pytest.fixture
def vms(topo):
    yield topo.vms
    for v in topo.vms.values():
        v.stage("remove", check=False)


def _tag() -> str:
    return f"qwadv{random.getrandbits(40):010x}"


# == firewall ==============================================================================


def _crossed(topo, vm, frame: bytes, tag: str) -> bool:
    """Whether a frame the VM sends reaches the LAN side of the bridge."""
    return bool(topo.sniff_during(LAN, "lan0", tag, lambda: vm.send(frame)))


def _vlan_cases(topo, vm):
    """(name, frame builder(tag) -> frame). Every frame breaks an anti-spoofing rule."""
    qinq = [(0x88A8, 10), (0x8100, 20)]
    dot1q = [(0x8100, 10)]
    return {
        # 802.1Q ARP reply claiming the gateway's address, with a foreign sender MAC
        "dot1q-arp-gateway": lambda t: eth("ff:ff:ff:ff:ff:ff", vm.mac, 0x0806, arp_reply(
            "52:54:00:99:99:99", "10.98.0.1", "ff:ff:ff:ff:ff:ff", "10.98.0.1") + t, vlans=dot1q),
        # 802.1ad (QinQ) IPv4 from an address the VM was not given
        "qinq-spoofed-ip": lambda t: eth(topo.lan_mac, vm.mac, 0x0800, ipv4_udp(
            "10.98.0.77", "10.98.0.2", 4000, 9999, t), vlans=qinq),
        # QinQ DHCP server answer (a guest must never be a DHCP server)
        "qinq-rogue-dhcp-server": lambda t: eth("ff:ff:ff:ff:ff:ff", vm.mac, 0x0800, ipv4_udp(
            "10.98.0.1", "255.255.255.255", 67, 68, t), vlans=qinq),
        "qinq-arp-gateway": lambda t: eth("ff:ff:ff:ff:ff:ff", vm.mac, 0x0806, arp_reply(
            "52:54:00:99:99:99", "10.98.0.1", "ff:ff:ff:ff:ff:ff", "10.98.0.1") + t, vlans=qinq),
    }


@pytest.mark.parametrize("case", ["dot1q-arp-gateway", "qinq-spoofed-ip", "qinq-rogue-dhcp-server",
                                  "qinq-arp-gateway"])
def test_vlan_tagged_frames_do_not_bypass_antispoofing(topo, vms, case):
    vm = vms[1]
    vm.stage("apply", {"profile": "nat"}, ips=[vm.ip4, vm.ip6])
    # Control: the same VM's honest untagged traffic does cross the bridge.
    tag = _tag()
    honest = eth(topo.lan_mac, vm.mac, 0x0800, ipv4_udp(vm.ip4, "10.98.0.2", 4000, 9999, tag.encode()))
    assert _crossed(topo, vm, honest, tag), "control frame did not cross: the topology is broken"
    tag = _tag()
    frame = _vlan_cases(topo, vm)[case](tag.encode())
    assert not _crossed(topo, vm, frame, tag), f"{case}: a VLAN-tagged frame bypassed anti-spoofing"


@pytest.mark.parametrize("profile", ["tor", "allowlist"])
def test_filtered_vm_cannot_tunnel_udp_over_dhcp_ports(topo, vms, profile):
    """UDP 68 -> 67 to any address (and the 67 -> 68 answer) passes the tor and
    allowlist profiles unmarked: a two-way channel around Tor / the allowlist."""
    vm = vms[2]
    prof = {"profile": profile}
    if profile == "allowlist":
        prof["allow"] = [{"dest": "10.98.0.2/32", "ports": [8080], "proto": "tcp"}]
    vm.stage("apply", prof, glob=TOR_GLOBAL)
    # Control: from another source port the same destination is unreachable.
    assert vm.udpcall(1234, REMOTE, 67, "ctl") == "FAIL"
    got = vm.udpcall(68, REMOTE, 67, "leak")
    assert got == "FAIL", f"{profile} VM exchanged UDP with {REMOTE} over ports 68/67: {got!r}"


def test_tor_vm_cannot_send_dhcpv6_client_packets_to_arbitrary_hosts(topo, vms):
    vm = vms[2]
    vm.stage("apply", {"profile": "tor"}, glob=TOR_GLOBAL)
    tag = _tag()
    frame = eth(topo.lan_mac, vm.mac, 0x86DD,
                ipv6(vm.ip6, "fd98::2", 17, udp6(vm.ip6, "fd98::2", 546, 547, tag.encode())))
    assert not _crossed(topo, vm, frame, tag), "tor VM sent unicast UDP 546->547 past Tor to a LAN host"


@pytest.mark.parametrize("src", ["fe80::1", "::"])
def test_ipv6_link_local_and_unspecified_sources_are_for_ndp_only(topo, vms, src):
    """With addresses declared, link-local (any, e.g. the router's fe80::1) and ::
    sources are exempt for every protocol, not only NDP / DAD."""
    vm = vms[1]
    vm.stage("apply", {"profile": "nat"}, ips=[vm.ip4, vm.ip6])
    tag = _tag()
    frame = eth(topo.lan_mac, vm.mac, 0x86DD, ipv6(src, "fd98::2", 17, udp6(src, "fd98::2", 4000, 9999,
                                                                            tag.encode())))
    assert not _crossed(topo, vm, frame, tag), f"UDP from {src} passed IPv6 anti-spoofing"


def test_second_vm_with_an_already_registered_mac_is_refused(topo, vms):
    a, b = vms[1], vms[2]
    own = b.mac
    a.stage("apply", {"profile": "nat"})
    b.mac = a.mac
    run("ip", "link", "set", "eth0", "address", a.mac, ns=b.ns)
    try:
        p = b.stage("apply", {"profile": "nat"}, check=False)
        assert p.returncode == 1, "two VMs were registered with the same MAC on one bridge"
    finally:
        b.stage("remove", check=False)
        b.mac = own
        run("ip", "link", "set", "eth0", "address", own, ns=b.ns)


# == keys ==================================================================================

from tests.keys_support import UUID, kenv, swtpm  # noqa: E402,F401  (fixtures)


def test_delivered_key_file_is_readable_by_its_owner(kenv):
    """--owner libvirt-qemu: the file is 0400 libvirt-qemu, but $STATE/keys is 0700
    root, so the QEMU user cannot reach it."""
    import pwd

    e = kenv
    pwd.getpwnam("libvirt-qemu")
    os.chmod(e.state, 0o755)  # like /run/qwamos
    e.enroll("disk", "--pcrs", "16", "--owner", "libvirt-qemu")
    r = e.hook("prepare", "begin")
    assert r.returncode == 0, r.stderr
    try:
        path = os.path.join(e.state, "keys", UUID, "disk")
        q = subprocess.run(["setpriv", "--reuid=libvirt-qemu", "--regid=libvirt-qemu", "--init-groups",
                            "cat", path], capture_output=True)
        assert q.returncode == 0 and q.stdout == e.unseal("disk"), q.stderr.decode()
    finally:
        e.hook("stopped", "end")


def test_symlinked_delivery_directory_is_refused(kenv, tmp_path):
    """A runtime_dir under a shared tmpfs: a planted <uuid> symlink makes the hook
    chown/chmod the target directory as root and write the key into it."""
    import pwd
    import shutil
    import tempfile

    e = kenv
    nobody = pwd.getpwnam("nobody")
    rt = tempfile.mkdtemp(prefix="qwadv2-rt-", dir="/dev/shm")
    victim = tempfile.mkdtemp(prefix="qwadv2-victim-", dir="/dev/shm")
    try:
        os.chown(rt, nobody.pw_uid, nobody.pw_gid)
        os.chmod(rt, 0o777)
        os.chmod(victim, 0o1777)
        os.symlink(victim, os.path.join(rt, UUID))
        e.enroll("disk", "--pcrs", "16", "--owner", "libvirt-qemu")
        with open(e.policy, "w") as fh:
            fh.write(f"version: 1\nprofiles:\n  default: {{}}\nkeys:\n  runtime_dir: {rt}\n")
        r = e.hook("prepare", "begin")
        st = os.stat(victim)
        leaked = os.listdir(victim)
        e.hook("stopped", "end")
        assert (stat_mode(st), st.st_uid) == (0o1777, 0), f"hook changed {victim} through a symlink"
        assert leaked == [] and r.returncode == 1, f"key delivered through a symlink: {leaked}"
    finally:
        shutil.rmtree(rt, ignore_errors=True)
        shutil.rmtree(victim, ignore_errors=True)


def stat_mode(st) -> int:
    import stat

    return stat.S_IMODE(st.st_mode)


def test_rotation_interrupted_after_commit_is_reported(kenv):
    """After a crash right after 'committed', v1 still unseals from disk and
    `keys status` says OK with exit 0: the retired key lives on unnoticed."""
    from qwamos_hooks.keys import manager, rotate, store
    from tests.keys_support import audit_append

    e = kenv
    e.enroll("disk", "--pcrs", "16")
    old = e.unseal("disk")

    class Crash(Exception):
        pass

    def crash(step):
        if step == "committed":
            raise Crash(step)

    with pytest.raises(Crash):
        rotate.rotate(e.lib, UUID, "disk", global_keys=e.global_keys(), audit=audit_append(e.lib), crash=crash)
    kdir = store.key_dir(e.lib, UUID, "disk")
    meta = store.load_meta(kdir)
    assert meta["current"] == 2
    still = os.path.exists(os.path.join(kdir, "v1.priv")) and \
        manager.unseal_version(kdir, meta, 1, e.global_keys()) == old
    s = e.cli("status")
    assert not still or s.returncode == 1, \
        f"retired v1 still unseals and status does not say so: {s.stdout.strip()}"


def test_binding_only_to_resettable_pcrs_is_not_silent(kenv):
    """PCR 23 can be reset by any TPM user (and reads zero after every boot):
    a key bound to it alone is a key bound to nothing, yet it is accepted
    without --no-pcrs and `keys status` raises no flag."""
    e = kenv
    r = e.cli("enroll", UUID, "weak", "--pcrs", "23")
    if r.returncode != 0:
        return  # refused: fixed
    s = e.cli("status")
    line = next(l for l in s.stdout.splitlines() if " weak:" in l)
    assert "[" in line and "23" in line.split("[", 1)[1], f"no warning for a PCR-23-only key: {line}"


def test_enrol_with_sha1_pcr_bank_works(kenv):
    """--pcr-bank sha1 is offered, and the TPM has an active sha1 bank, but the
    PolicyPCR digest is hashed with the bank's algorithm instead of the policy
    session's (sha256): sealing succeeds, the verify-unseal fails."""
    e = kenv
    with e.swtpm.tpm() as t:
        assert t.read_pcrs("sha1", (16,)), "precondition: the TPM has a sha1 bank"
    r = e.cli("enroll", UUID, "legacy", "--pcr-bank", "sha1", "--pcrs", "16", "--allow-resettable-pcrs")
    assert r.returncode == 0, r.stderr.strip()
