"""Small programs the firewall tests run inside network namespaces: listeners
that answer with a tag, a client, and a raw Ethernet frame sender."""

import json
import os
import socket
import struct
import sys
import threading

PY = "/opt/qwamos/venv/bin/python"
HERE = os.path.abspath(__file__)


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


def _csum(b):
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
    ucs = _csum(pseudo + udp_h + payload) or 0xFFFF
    udp_h = struct.pack("!HHHH", sport, dport, udp_len, ucs)
    ip_h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, sip, dip)
    ip_h = ip_h[:10] + struct.pack("!H", _csum(ip_h)) + ip_h[12:]
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
