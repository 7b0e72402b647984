"""What the firewall tests share: `run` (a command, optionally inside a
network namespace), `NetnsVM` (a namespace playing a VM on a libvirt-like
tap), `csum`, and small programs run inside the namespaces: listeners that
answer with a tag, a client, and a raw Ethernet frame sender."""

import json
import os
import socket
import struct
import subprocess
import sys
import threading

PY = "/opt/qwamos/venv/bin/python"
HERE = os.path.abspath(__file__)


def run(*args, ns=None, check=True, timeout=30, env=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


class NetnsVM:
    """A 'VM': namespace `ns` whose eth0 is the veth peer of `tap` on br0 in the
    host namespace, and the domain XML the firewall stage actions read for it."""

    def __init__(self, topo, host_ns, driver, *, ns, tap, mac, ip4, ip6, name, uuid, gw4, gw6=None):
        self.topo, self.host_ns, self.driver = topo, host_ns, driver
        self.ns, self.tap, self.mac, self.ip4, self.ip6, self.name, self.uuid = ns, tap, mac, ip4, ip6, name, uuid
        self.gw4, self.gw6 = gw4, gw6

    def create(self):
        run("ip", "netns", "add", self.ns)
        run("ip", "link", "add", self.tap, "type", "veth", "peer", "name", "eth0", "netns", self.ns, ns=self.host_ns)
        run("ip", "link", "set", self.tap, "master", "br0", "up", ns=self.host_ns)
        cmds = [["link", "set", "lo", "up"], ["link", "set", "eth0", "address", self.mac],
                ["addr", "add", f"{self.ip4}/24", "dev", "eth0"],
                ["addr", "add", f"{self.ip6}/64", "dev", "eth0", "nodad"],
                ["link", "set", "eth0", "up"],
                ["route", "add", "default", "via", self.gw4]]
        if self.gw6:
            cmds.append(["-6", "route", "add", "default", "via", self.gw6])
        for c in cmds:
            run("ip", *c, ns=self.ns)

    def xml(self, ips=()):
        ipx = "".join(f"<ip address='{a}'/>" for a in ips)
        body = (f"<domain type='qemu'><name>{self.name}</name><uuid>{self.uuid}</uuid>"
                f"<memory>65536</memory><devices><interface type='bridge'>"
                f"<mac address='{self.mac}'/><source bridge='br0'/><target dev='{self.tap}'/>"
                f"<model type='virtio'/>{ipx}</interface></devices></domain>")
        path = os.path.join(self.topo.tmp, f"{self.name}.xml")
        with open(path, "w") as fh:
            fh.write(body)
        return path

    def stage(self, action, profile=None, glob=None, ips=(), check=True):
        """Run a firewall stage action for this VM as the hook runs it (fw_driver.py)."""
        p = run(PY, self.driver, action, self.xml(ips), json.dumps(profile or {}), json.dumps(glob or {}),
                ns=self.host_ns, check=False, env=getattr(self.topo, "env", None))
        if check:
            assert p.returncode == 0, p.stderr
        return p


def _family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def serve(specs):
    """specs: [[kind, addr, port, tag_or_logfile]]; kind tcp | udp | udplog."""
    def tcp(addr, port, tag):
        s = socket.socket(_family(addr), socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(16)
        while True:
            c, _ = s.accept()
            try:
                c.settimeout(2)
                c.recv(100)
                c.sendall(tag.encode())
            except OSError:
                pass
            c.close()

    def udp(addr, port, tag):
        s = socket.socket(_family(addr), socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        while True:
            data, peer = s.recvfrom(2048)
            # A DNS-shaped answer: the query id back, then who answered.
            s.sendto(data[:2] + b"|" + tag.encode(), peer)

    def udplog(addr, port, path):
        s = socket.socket(_family(addr), socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.bind((addr, port))
        while True:
            data, peer = s.recvfrom(2048)
            with open(path, "a") as fh:
                fh.write(json.dumps({"from": peer[0], "data": data.decode(errors="replace")}) + "\n")

    threads = []
    for kind, addr, port, arg in specs:
        t = threading.Thread(target={"tcp": tcp, "udp": udp, "udplog": udplog}[kind],
                             args=(addr, int(port), arg), daemon=True)
        t.start()
        threads.append(t)
    print("ready", flush=True)
    for t in threads:
        t.join()


def client(kind, addr, port, sport=None, timeout=1.5):
    try:
        if kind == "tcp":
            s = socket.create_connection((addr, int(port)), timeout=timeout)
            s.sendall(b"hello")
            data = s.recv(100)
        else:
            s = socket.socket(_family(addr), socket.SOCK_DGRAM)
            s.settimeout(timeout)
            if sport:
                s.bind(("::" if ":" in addr else "0.0.0.0", int(sport)))
            q = b"\x12\x34" + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
            s.sendto(q, (addr, int(port)))
            data, _ = s.recvfrom(2048)
            if data[:2] != b"\x12\x34":
                return "BADID"
            data = data[3:]
        return data.decode()
    except OSError:
        return "FAIL"


def csum(b):
    """The Internet checksum (RFC 1071)."""
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src_mac, dst_mac, src_ip, dst_ip, sport, dport, payload):
    mac = lambda m: bytes(int(x, 16) for x in m.split(":"))  # noqa: E731
    sip, dip = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    udp_len = 8 + len(payload)
    pseudo = sip + dip + struct.pack("!BBH", 0, 17, udp_len)
    udp_h = struct.pack("!HHHH", sport, dport, udp_len, 0)
    ucs = csum(pseudo + udp_h + payload) or 0xFFFF
    udp_h = struct.pack("!HHHH", sport, dport, udp_len, ucs)
    ip_h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, sip, dip)
    ip_h = ip_h[:10] + struct.pack("!H", csum(ip_h)) + ip_h[12:]
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip_h + udp_h + payload


def send_raw(dev, *frame_args):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    s.send(udp_frame(*frame_args))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(json.loads(sys.argv[2]))
    elif cmd == "client":
        print(client(*sys.argv[2:6]))
    elif cmd == "raw":
        dev, smac, dmac, sip, dip, sport, dport, payload = sys.argv[2:10]
        send_raw(dev, smac, dmac, sip, dip, int(sport), int(dport), payload.encode())
