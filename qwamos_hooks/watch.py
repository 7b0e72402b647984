"""qwamos-policy watch: keep running VMs compliant.

libvirt runs no hook for changes to a running domain (``virsh attach-device
--live``, ``update-device``, ``qemu-monitor-command``), so a VM the hook
admitted can be given a forbidden device afterwards. This long-running process
subscribes to libvirt's domain events, re-checks the live XML with the same
engine the hook uses, and in enforce mode detaches the offending devices or,
when that is not enough, destroys the domain.

It is never imported by the hook (a hook must not call libvirt): ``libvirt``
and ``lxml`` are imported inside the functions that need them.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import signal
import sys
import threading
import time
from typing import NamedTuple

# Decisions, as they appear in the log and the audit log.
ALLOW = "allow"
AUDIT_ALLOW = "audit-allow"  # audit mode: would have detached or destroyed
DETACH = "detach"
DESTROY = "destroy"
UNJUDGED = "unjudged"  # no usable policy and nothing to refuse
ERROR = "error"

_NIC = "interface"
DETACH_ROUNDS = 3  # devices hot-plugged while a detach runs get this many more chances


# --- pure logic --------------------------------------------------------------


class Device(NamedTuple):
    """A child of <devices> in the live XML, with the lines it covers."""

    tag: str
    alias: str | None
    first: int
    last: int
    xml: bytes  # the element as libvirt wrote it (for update-device)


class Plan(NamedTuple):
    action: str  # ALLOW | AUDIT_ALLOW | DETACH | DESTROY | UNJUDGED
    aliases: tuple  # devices to detach, in document order
    reason: str


def live_devices(xml: bytes) -> tuple[Device, ...]:
    """The devices of a live domain XML with their line spans. Lines match
    what ``domain.parse_bytes`` reports for the same bytes."""
    from lxml import etree

    from .domain import parser

    root = etree.fromstring(xml, parser())
    devices = root.find("devices")
    out = []
    for el in (devices if devices is not None else ()):
        if not isinstance(el.tag, str):
            continue
        alias = el.find("alias")
        lines = [n.sourceline for n in el.iter() if n.sourceline]
        first = el.sourceline or 0
        out.append(Device(el.tag, alias.get("name") if alias is not None else None,
                          first, max(lines, default=first), etree.tostring(el)))
    return tuple(out)


def device_at(devices, line: int) -> Device | None:
    for d in devices:
        if line and d.first <= line <= d.last:
            return d
    return None


def plan(errors, devices, mode: str) -> Plan:
    """Choose what to do about a running domain's blocking findings.

    Detaching is preferred when every finding points inside a device that
    libvirt named with an alias: the VM keeps running without it. A finding
    about the domain as a whole, or about a device without an alias, can only
    be answered by destroying the domain."""
    if not errors:
        return Plan(ALLOW, (), "compliant")
    ids = ", ".join(dict.fromkeys(f.rule for f in errors))
    aliases: list[str] = []
    unplaced = []
    for f in errors:
        d = device_at(devices, f.line)
        if d is None or not d.alias:
            unplaced.append(f)
        elif d.alias not in aliases:
            aliases.append(d.alias)
    if unplaced:
        what = ", ".join(dict.fromkeys(f.rule for f in unplaced))
        action = DESTROY
        why = (f"{ids}: not tied to a removable device" if what == ids
               else f"{ids} ({what} not tied to a removable device)")
    else:
        action, why = DETACH, f"{ids} on {', '.join(aliases)}"
    if mode != "enforce":
        return Plan(AUDIT_ALLOW, tuple(aliases), f"would {action}: {why}")
    return Plan(action, tuple(aliases) if action == DETACH else (), why)


def plan_unjudged(problem: str, added_alias: str | None) -> Plan:
    """No usable policy. Like the hook, which refuses every start then, refuse
    the change that triggered the check; never kill a VM for it."""
    if added_alias:
        return Plan(DETACH, (added_alias,), f"hot-plugged device refused: {problem}")
    return Plan(UNJUDGED, (), f"cannot judge: {problem}")


def link_down_xml(device_xml: bytes) -> bytes:
    """The same <interface> with its link set down (takes effect at once,
    while a PCI unplug waits for the guest)."""
    from lxml import etree

    from .domain import parser

    el = etree.fromstring(device_xml, parser())
    for old in el.findall("link"):
        el.remove(old)
    etree.SubElement(el, "link", state="down")
    return etree.tostring(el)


def device_key(dev: Device) -> tuple:
    """What identifies a device across two looks at the live XML: its content
    without the link state (which the watcher itself changes)."""
    from lxml import etree

    from .domain import parser

    el = etree.fromstring(dev.xml, parser())
    for link in el.findall("link"):
        el.remove(link)
    return (dev.tag, dev.alias, etree.tostring(el, method="c14n"))


def wanted(name: str | None, globs) -> bool:
    return not globs or any(fnmatch.fnmatchcase(name or "", g) for g in globs)


def finding_records(errors) -> list:
    return [{"rule": f.rule, "device": f.device, "message": f.message} for f in errors]


# --- the policy, reloaded when its file changes -------------------------------


class PolicySource:
    def __init__(self, path: str, missing_ok: bool):
        self.path = path
        self.missing_ok = missing_ok
        self.stamp: object = ()
        self.policy = None
        self.problem: str | None = None
        self.lock = threading.Lock()

    def _stamp(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return ("error", str(exc))
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def current(self, log):
        """(policy, problem): reloads when the file changed since last time."""
        with self.lock:
            return self._current(log)

    def _current(self, log):
        from .errors import PolicyError
        from .policy import load_policy

        stamp = self._stamp()
        if stamp != self.stamp:
            try:
                self.policy, self.problem = load_policy(self.path, missing_ok=self.missing_ok), None
                log(f"policy loaded: {self.policy.source} (mode {self.policy.mode})")
            except PolicyError as exc:
                self.policy, self.problem = None, str(exc)
                log(f"policy unusable: {exc}; hot-plugged devices are refused until it is fixed")
            self.stamp = stamp
        return self.policy, self.problem


# --- the daemon --------------------------------------------------------------


class Options(NamedTuple):
    uri: str
    policy_path: str
    policy_missing_ok: bool
    domains: tuple  # name globs; empty = every domain
    detach_timeout: float
    rescan_interval: float  # 0 = never
    ready_file: str | None
    pidfile: str | None


def _logger(log_file: str | None):
    def log(line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        msg = f"{stamp} [{os.getpid()}] watch: {line}"
        try:
            print(msg, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        if log_file:
            try:
                os.makedirs(os.path.dirname(log_file), mode=0o750, exist_ok=True)
                with open(log_file, "a", encoding="utf-8") as fh:
                    fh.write(msg + "\n")
            except OSError:
                pass

    return log


class Watcher:
    def __init__(self, opts: Options, paths, log):
        self.opts = opts
        self.paths = paths
        self.log = log
        self.policy = PolicySource(opts.policy_path, opts.policy_missing_ok)
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.conn = None
        self.callbacks: list[int] = []
        self.seen: dict[str, str] = {}  # uuid -> digest of the XML last judged by a rescan
        self.connected_once = False
        self.busy: dict[str, list] = {}  # uuid -> checks queued behind the running one
        self.idle = threading.Condition()

    # Callbacks run on the event-loop thread: they only queue work, never raise.
    def _on_lifecycle(self, conn, dom, event, detail, opaque):
        import libvirt

        names = {libvirt.VIR_DOMAIN_EVENT_STARTED: "started", libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
                 libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined"}
        if event in names:
            self._queue(dom, names[event], None)

    def _on_device_added(self, conn, dom, alias, opaque):
        self._queue(dom, "device-added", alias)

    def _on_metadata(self, conn, dom, mtype, nsuri, opaque):
        self._queue(dom, "metadata-change", None)

    def _on_close(self, conn, reason, opaque):
        self.events.put(("closed", reason, None, None))

    def _queue(self, dom, why, alias):
        try:
            self.events.put(("check", dom.UUIDString(), dom.name(), (why, alias)))
        except Exception as exc:  # noqa: BLE001 - a bad event must not stop the loop
            self.log(f"ignored malformed event {why}: {exc}")

    def _audit(self, **fields) -> None:
        from . import audit

        try:
            audit.append(self.paths.audit_log, "watch", **fields)
        except OSError as exc:
            self.log(f"cannot write audit log {self.paths.audit_log}: {exc.strerror or exc}")

    # --- connection ----------------------------------------------------------

    def _connect(self) -> None:
        import libvirt

        conn = libvirt.open(self.opts.uri)
        try:
            conn.setKeepAlive(5, 3)
            conn.registerCloseCallback(self._on_close, None)
            for ev, cb in ((libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._on_device_added),
                           (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
                           (libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata)):
                self.callbacks.append(conn.domainEventRegisterAny(None, ev, cb, None))
        except BaseException:
            self.conn = conn
            self._disconnect()
            raise
        self.conn = conn

    def _disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        for cid in self.callbacks:
            try:
                conn.domainEventDeregisterAny(cid)
            except Exception:  # noqa: BLE001 - the connection may already be gone
                pass
        self.callbacks = []
        try:
            conn.unregisterCloseCallback()
        except Exception:  # noqa: BLE001
            pass
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass

    # --- checks --------------------------------------------------------------

    def sweep(self, why: str, quiet_if_unchanged: bool = False, wait: bool = False) -> None:
        import libvirt

        uuids = []
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            if wanted(dom.name(), self.opts.domains):
                uuids.append(dom.UUIDString())
                self._dispatch(uuids[-1], why, None, quiet_if_unchanged)
        if wait:
            self._wait_idle(lambda: not any(u in self.busy for u in uuids), None)

    def _wait_idle(self, done, timeout: float | None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        with self.idle:
            while not done() and not self.stop.is_set() and (end is None or time.monotonic() < end):
                self.idle.wait(0.5)

    def _dispatch(self, uuid: str, why: str, added: str | None, quiet: bool = False) -> None:
        """Checks of one domain run in order, each domain on its own thread:
        a detach waiting on one guest never delays the verdict on another."""
        with self.idle:
            if uuid in self.busy:
                self.busy[uuid].append((why, added, quiet))
                return
            self.busy[uuid] = []
        threading.Thread(target=self._domain_worker, args=(uuid, why, added, quiet),
                         name=f"check-{uuid}", daemon=True).start()

    def _domain_worker(self, uuid, why, added, quiet) -> None:
        import libvirt

        while True:
            dom = None
            conn = self.conn  # the current one: checks queued before a reconnect run on the new one
            try:
                if conn is not None:
                    dom = conn.lookupByUUIDString(uuid)
                    self.check(dom, why, added, quiet)
            except libvirt.libvirtError as exc:
                # The domain went away meanwhile, or the connection did (the
                # sweep after the reconnect looks again).
                if dom is not None and _alive(conn):
                    self.log(f"{uuid} {why}: libvirt error: {exc}")
            except Exception as exc:  # noqa: BLE001 - never die on one bad domain
                self._error(dom, why, exc)
            with self.idle:
                pending = self.busy[uuid]
                if not pending:
                    del self.busy[uuid]
                    self.idle.notify_all()
                    return
                why, added, quiet = pending.pop(0)

    def check(self, dom, why: str, added: str | None, quiet_if_unchanged: bool = False) -> None:
        import hashlib

        from . import domain, engine
        from .errors import InputError

        name, uuid = dom.name(), dom.UUIDString()
        if not dom.isActive():
            return
        xml = dom.XMLDesc(0).encode()
        policy, problem = self.policy.current(self.log)
        # A rescan stays quiet about a domain it has judged before, unless its
        # XML or the policy changed since.
        digest = hashlib.sha256(xml).hexdigest() + (policy.digest if policy is not None else "-")
        if quiet_if_unchanged and self.seen.get(uuid) == digest:
            return
        self.seen[uuid] = digest
        fields = {"vm": name, "uuid": uuid, "trigger": why, "device": added}
        if policy is None:
            p, errors = plan_unjudged(problem, added), ()
            fields["policy"] = self.policy.path
        else:
            fields.update(policy=policy.source, mode=policy.mode)
            try:
                result = engine.evaluate(domain.parse_bytes(xml, f"{name} (live)"), policy, live=True)
            except InputError as exc:
                # libvirt wrote XML our parser refuses: it cannot be judged, so fail closed.
                p, errors = plan_unparsed(str(exc), policy.mode), ()
            else:
                fields["profile"] = result.profile.name
                errors = result.errors
                p = plan(errors, live_devices(xml), policy.mode)
        decision, note = p.action, p.reason
        if p.action == DETACH:
            decision, note = self._detach(dom, p, xml)
        elif p.action == DESTROY:
            decision, note = self._destroy(dom, note)
        if quiet_if_unchanged and decision == ALLOW:
            return
        self.log(f"{name} {why}{' ' + added if added else ''}: {decision}: {note}")
        self._audit(decision=decision, reason=note, aliases=list(p.aliases),
                    findings=finding_records(errors), **fields)

    def _detach(self, dom, p: Plan, xml: bytes):
        """Detach, wait, judge again. A device hot-plugged meanwhile gets the
        same treatment, for a few rounds; then the domain is destroyed."""
        from . import domain, engine

        detached: list[str] = []
        first = p.reason
        for _ in range(DETACH_ROUNDS):
            failed = self._request_detach(dom, p.aliases, live_devices(xml))
            if failed:
                return self._destroy(dom, f"{first}; {failed}")
            xml, left = self._wait_gone(dom, [d for d in live_devices(xml) if d.alias in p.aliases])
            if xml is None:
                return DESTROY, f"{first}; the domain stopped during detach"
            if left:
                return self._destroy(dom, f"{first}; detach of {', '.join(left)} did not complete "
                                          f"within {self.opts.detach_timeout:g} s")
            detached += [a for a in p.aliases if a not in detached]
            policy, problem = self.policy.current(self.log)
            if policy is None:
                break  # only the added device was refused; nothing more to judge by
            after = engine.evaluate(domain.parse_bytes(xml, f"{dom.name()} (live)"), policy, live=True).errors
            p = plan(after, live_devices(xml), policy.mode)
            if p.action in (ALLOW, AUDIT_ALLOW):
                break
            if p.action != DETACH:
                return self._destroy(dom, f"{first}; still non-compliant after detach: {p.reason}")
        else:
            return self._destroy(dom, f"{first}; still non-compliant after {DETACH_ROUNDS} detach rounds")
        return DETACH, f"{first}; detached {', '.join(detached)}"

    def _request_detach(self, dom, aliases, devices) -> str | None:
        """Cut each NIC's link, then ask for the unplug. Returns why it failed, or None."""
        import libvirt

        by_alias = {d.alias: d for d in devices if d.alias}
        for alias in aliases:
            dev = by_alias.get(alias)
            if dev is not None and dev.tag == _NIC:
                try:  # takes effect at once; a PCI unplug waits for the guest
                    dom.updateDeviceFlags(link_down_xml(dev.xml).decode(), libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError as exc:
                    self.log(f"{dom.name()}: cannot set link down on {alias}: {exc}")
            try:
                dom.detachDeviceAlias(alias, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                return f"detach of {alias} failed: {exc}"
        return None

    def _wait_gone(self, dom, targets):
        """(live XML, aliases still present) once the targets are gone or the
        timeout passes; (None, []) if the domain stopped. A device is matched
        by its content, not its alias alone: libvirt reuses a freed alias for
        the next device attached."""
        keys = {device_key(d): d.alias for d in targets}
        deadline = time.monotonic() + self.opts.detach_timeout
        while True:
            if not dom.isActive():
                return None, []
            xml = dom.XMLDesc(0).encode()
            left = [keys[k] for k in (device_key(d) for d in live_devices(xml)) if k in keys]
            if not left or time.monotonic() >= deadline:
                return xml, left
            time.sleep(0.05)

    def _destroy(self, dom, reason: str):
        import libvirt

        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                return ERROR, f"{reason}; DESTROY FAILED: {exc}"
        return DESTROY, f"{reason}; domain destroyed"

    def _error(self, dom, why, exc) -> None:
        try:
            name, uuid = dom.name(), dom.UUIDString()  # dom may be None
        except Exception:  # noqa: BLE001
            name, uuid = "?", None
        self.log(f"{name} {why}: error: {type(exc).__name__}: {exc}")
        self._audit(vm=name, uuid=uuid, trigger=why, decision=ERROR, reason=f"{type(exc).__name__}: {exc}",
                    findings=[])

    # --- main loop -----------------------------------------------------------

    def run(self) -> int:
        import libvirt

        libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_event_loop, name="libvirt-events", daemon=True).start()
        self.policy.current(self.log)  # say at once which policy applies, or why none does
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self._connect()
                self.sweep("reconnect" if self.connected_once else "startup", wait=True)
            except libvirt.libvirtError as exc:
                self._disconnect()
                self.log(f"cannot use {self.opts.uri}: {exc}; retrying in {backoff:g} s")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            self.log(f"watching {self.opts.uri} (domains: {', '.join(self.opts.domains) or 'all'})")
            if self.opts.ready_file:
                try:
                    _write_file(self.opts.ready_file, f"{os.getpid()}\n")
                except OSError as exc:
                    self.log(f"cannot write {self.opts.ready_file}: {exc.strerror or exc}")
            backoff, self.connected_once = 0.5, True
            self._serve()
            self._disconnect()
            if not self.stop.is_set():
                self.log(f"lost the connection to {self.opts.uri}; reconnecting")
        # Let a detach in progress finish or give up before exiting.
        end = time.monotonic() + self.opts.detach_timeout + 5
        with self.idle:
            while self.busy and time.monotonic() < end:
                self.idle.wait(0.5)
        return 0

    def _serve(self) -> None:
        import libvirt

        next_rescan = time.monotonic() + self.opts.rescan_interval
        while not self.stop.is_set():
            timeout = 1.0
            if self.opts.rescan_interval > 0:
                timeout = max(0.0, min(timeout, next_rescan - time.monotonic()))
            try:
                item = self.events.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                if item is not None and item[0] == "closed":
                    return
                if item is not None and item[0] == "check" and wanted(item[2], self.opts.domains):
                    self._dispatch(item[1], *item[3])
                if self.opts.rescan_interval > 0 and time.monotonic() >= next_rescan:
                    # update-device and friends raise no event: look again now and then.
                    self.sweep("rescan", quiet_if_unchanged=True)
                    next_rescan = time.monotonic() + self.opts.rescan_interval
                if not self.conn.isAlive():
                    return
            except libvirt.libvirtError as exc:
                if self.conn is None or not _alive(self.conn):
                    return
                self.log(f"libvirt error: {exc}")


def plan_unparsed(problem: str, mode: str) -> Plan:
    why = f"live XML cannot be judged: {problem}"
    if mode != "enforce":
        return Plan(AUDIT_ALLOW, (), f"would destroy: {why}")
    return Plan(DESTROY, (), why)


def _alive(conn) -> bool:
    try:
        return bool(conn.isAlive())
    except Exception:  # noqa: BLE001
        return False


def _event_loop() -> None:
    import libvirt

    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # noqa: BLE001 - keep dispatching
            time.sleep(0.1)


def _write_file(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _remove_own(path: str | None) -> None:
    if not path:
        return
    try:
        with open(path) as fh:
            if fh.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


# --- command line -------------------------------------------------------------


def register(sub) -> None:
    w = sub.add_parser(
        "watch", help="enforce the policy on running VMs (hot-plugged devices)",
        description="Long-running: re-check running domains whenever libvirt reports a device "
                    "added, a start or a metadata change; in enforce mode detach what the policy "
                    "forbids, or destroy the domain. See docs/watch.md.")
    w.add_argument("--connect", "-c", metavar="URI", default="qemu:///system",
                   help="libvirt URI (default: qemu:///system)")
    w.add_argument("--domain", action="append", default=[], metavar="GLOB",
                   help="only domains whose name matches (repeatable; default: every domain)")
    w.add_argument("--detach-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long a detach may take before the domain is destroyed (default: 5)")
    w.add_argument("--rescan-interval", type=float, default=30.0, metavar="SECONDS",
                   help="re-check every running domain this often, for changes libvirt raises no "
                        "event for (default: 30; 0 = never)")
    w.add_argument("--ready-file", metavar="PATH",
                   help="write the PID here once subscribed and the first sweep is done")
    w.add_argument("--pidfile", metavar="PATH", help="write the PID here at start")
    w.add_argument("--log-file", metavar="PATH",
                   help="also append log lines here (default: $QWAMOS_LOG_FILE, else stderr only)")
    w.set_defaults(func=cmd_watch)


def cmd_watch(args) -> int:
    from .errors import EXIT_INPUT, PolicyError
    from .paths import DEFAULT_POLICY, Paths
    from .policy import load_policy

    paths = Paths.from_env(policy=args.policy)
    if args.detach_timeout < 0 or args.rescan_interval < 0:
        print("qwamos-policy: --detach-timeout and --rescan-interval must be 0 or more", file=sys.stderr)
        return EXIT_INPUT
    explicit = paths.policy != DEFAULT_POLICY
    if explicit:
        # A policy named on the command line must work now; the host policy may be fixed later.
        try:
            load_policy(paths.policy)
        except PolicyError as exc:
            print(f"qwamos-policy: {exc}", file=sys.stderr)
            return EXIT_INPUT
    log = _logger(args.log_file or os.environ.get("QWAMOS_LOG_FILE"))
    opts = Options(args.connect, paths.policy, not explicit, tuple(args.domain), args.detach_timeout,
                   args.rescan_interval, args.ready_file, args.pidfile)
    watcher = Watcher(opts, paths, log)

    def stop(signum, frame):
        watcher.stop.set()
        watcher.events.put(("wake", None, None, None))

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.pidfile:
        _write_file(args.pidfile, f"{os.getpid()}\n")
    try:
        return watcher.run()
    finally:
        _remove_own(args.ready_file)
        _remove_own(args.pidfile)
        log("stopped")
