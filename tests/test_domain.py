"""Domain model: safe parsing, hostile input, namespaces, line numbers."""

import os

import pytest

from qwamos_hooks import domain
from qwamos_hooks.errors import InputError, NotADomain

from .domains import domain_xml, nic

CORPUS = os.environ.get("QWAMOS_CORPUS") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "libvirt")


def parse(xml: str):
    return domain.parse_bytes(xml.encode(), "t.xml")


def test_interface_fields_and_lines():
    d = parse(domain_xml(nics=[nic(), nic("bridge", mac="52:54:00:AA:00:02", extra="<target dev='vnet7'/><alias name='ua-x'/><ip address='10.0.0.5'/>")]))
    a, b = d.interfaces
    assert a.type == "network" and a.source_network == "default" and a.model == "virtio" and a.driver_name == "vhost"
    assert b.mac == "52:54:00:aa:00:02"  # lower-cased
    assert b.source_bridge == "virbr0" and b.target_dev == "vnet7" and b.alias == "ua-x" and b.ips == ("10.0.0.5",)
    assert a.line < b.line and a.line > 1


def test_network_bridge_attribute_is_the_resolved_bridge_only():
    d = parse(domain_xml(nics=[nic(source="<source network='default' bridge='virbr0'/>")]))
    assert d.interfaces[0].resolved_bridge == "virbr0"
    assert d.interfaces[0].source_bridge is None


def test_first_child_wins_and_duplicates_are_recorded():
    d = parse(domain_xml(nics=[nic("bridge", source="<source bridge='evil0'/><source bridge='virbr0'/>")]))
    assert d.interfaces[0].source_bridge == "evil0"
    assert d.interfaces[0].duplicated == ("source",)


def test_interfaces_in_every_devices_element():
    xml = domain_xml(tail="\n  <devices>" + nic(mac="52:54:00:aa:00:09") + "\n  </devices>")
    assert [i.mac for i in parse(xml).interfaces] == ["52:54:00:aa:00:01", "52:54:00:aa:00:09"]


@pytest.mark.parametrize("xml, needle", [
    ("<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><domain><name>&x;</name></domain>", "DOCTYPE"),
    ("<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>"
     "<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]><domain>&lol3;</domain>", "DOCTYPE"),
    ("<domain><name>x</name>", "not well-formed"),
    ("<domain><name>x</nam></domain>", "not well-formed"),
    ("\x00\x01\x02garbage\xff", "not well-formed"),
    ("   \n  ", "empty input"),
    ("<network><name>default</name></network>", "expected <domain>"),
    ("<d:network xmlns:d='urn:x'/>", "expected <domain>"),
])
def test_hostile_and_broken_inputs_are_one_line_errors(xml, needle):
    with pytest.raises(InputError) as exc:
        domain.parse_bytes(xml.encode("latin-1"), "in.xml")
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg and msg.startswith("in.xml")


def test_external_entity_without_doctype_check_is_still_not_resolved(tmp_path):
    # Even if the DOCTYPE screen were bypassed, the parser itself must not read files.
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    xml = f"<!DOCTYPE d [<!ENTITY x SYSTEM 'file://{secret}'>]><domain><name>&x;</name></domain>"
    from lxml import etree
    root = etree.fromstring(xml.encode(), domain.parser())
    assert "TOPSECRET" not in etree.tostring(root).decode()


def test_size_cap():
    big = b"<domain><name>x</name><description>" + b"A" * (domain.MAX_BYTES) + b"</description></domain>"
    with pytest.raises(InputError, match="larger than 10 MiB"):
        domain.parse_bytes(big, "big.xml")


def test_root_matched_by_local_name_as_libvirt_does():
    d = domain.parse_bytes(b"<x:domain xmlns:x='urn:x' type='qemu'><name>n</name></x:domain>", "p.xml")
    assert d.name == "n" and d.type == "qemu"


def test_attributes_read_like_xmlgetprop():
    # libvirt takes the first attribute of that local name, whatever its namespace.
    xml = domain_xml(nics=[nic(mac=None, extra="<mac xmlns:x='urn:x' x:address='00:11:22:33:44:55' address='52:54:00:aa:00:01'/>")])
    assert parse(xml).interfaces[0].mac == "00:11:22:33:44:55"


def test_name_is_not_stripped():
    assert parse(domain_xml(name=" spaced ")).name == " spaced "


def test_identity_only_from_unparseable_xml():
    d = domain.identity_only(b"<domain><name> vm </name><uuid>6F1C2D3E-0000-4000-8000-000000000001</uuid><desc", "s")
    assert (d.name, d.uuid) == (" vm ", "6f1c2d3e-0000-4000-8000-000000000001")
    assert d.interfaces == () and d.hostdevs == () and d.commandlines == () and d.metadata is None
    assert domain.identity_only(b"<domain><name>x</name>", "s") is None


def test_not_a_domain_is_its_own_error_type():
    with pytest.raises(NotADomain):
        domain.parse_bytes(b"<domainsnapshot/>", "s.xml")


def test_unreadable_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        domain.parse_file(str(tmp_path / "missing.xml"))


def test_qemu_namespace_matched_by_uri_not_prefix():
    # Prefix 'qemu' bound to a dummy URI at the root, the real namespace under another prefix.
    xml = domain_xml(root_attrs=" xmlns:qemu='urn:dummy'", tail="""
  <qemu:commandline><qemu:arg value='-ignored'/></qemu:commandline>
  <ns9:commandline xmlns:ns9='http://libvirt.org/schemas/domain/qemu/1.0'><ns9:arg value='-netdev'/><ns9:arg value='user,id=x'/></ns9:commandline>
  <commandline xmlns='http://libvirt.org/schemas/domain/qemu/1.0'><arg value='-nic'/></commandline>""")
    d = parse(xml)
    assert [a for cl in d.commandlines for a, _ in cl.args] == ["-netdev", "user,id=x", "-nic"]


def test_metadata_profile_and_waivers():
    xml = domain_xml(tail="""
  <metadata><q:vm xmlns:q='urn:qwamos:hooks:1' profile='tor'><q:waive rule='QW105' reason='lab' expires='2030-01-01'/></q:vm></metadata>""")
    md = parse(xml).metadata
    assert md.profile == "tor" and md.waivers[0].rule == "QW105" and md.waivers[0].reason == "lab"


def test_resources_and_os():
    xml = domain_xml(memory_mib=2048, vcpus=4).replace("<vcpu>", "<memtune><hard_limit unit='GiB'>3</hard_limit></memtune><vcpu>")
    d = parse(xml)
    assert d.memory_kib == 2048 * 1024 and d.hard_limit_kib == 3 * 1024 * 1024 and d.vcpus == 4
    assert d.arch == "x86_64" and d.machine == "pc" and d.type == "qemu"


def test_whole_corpus_parses_and_round_trips_through_the_parse_cache_form():
    import marshal

    n = 0
    for root, _dirs, files in os.walk(CORPUS):
        for f in files:
            if f.endswith(".xml"):
                d = domain.parse_file(os.path.join(root, f))
                back = domain.from_plain(marshal.loads(marshal.dumps(domain.to_plain(d))))
                assert repr(back) == repr(d), f  # repr names every class: types survive too
                n += 1
    assert n >= 2787, f"corpus not found or incomplete at {CORPUS} ({n} files)"
