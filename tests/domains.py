"""Builders for domain XML used across the tests (unit and end to end)."""

from __future__ import annotations

import uuid as uuidlib

GOOD_NIC = """
    <interface type='network'>
      <mac address='{mac}'/>
      <source network='default'/>
      <model type='virtio'/>
      <driver name='vhost'/>
    </interface>"""


def nic(type="network", mac="52:54:00:aa:00:01", source=None, model="virtio", driver="vhost", extra=""):
    src = source if source is not None else ({"network": "<source network='default'/>",
                                              "bridge": "<source bridge='virbr0'/>"}.get(type, ""))
    mac_el = f"<mac address='{mac}'/>" if mac else ""
    model_el = f"<model type='{model}'/>" if model else ""
    drv = f"<driver name='{driver}'/>" if driver else ""
    body = "".join(f"\n      {el}" for el in (mac_el, src, model_el, drv, extra) if el)
    return f"\n    <interface type='{type}'>{body}\n    </interface>"


def domain_xml(name="qwtest-vm", uuid=None, nics=None, devices_extra="", tail="", root_attrs="",
               dtype="qemu", memory_mib=64, vcpus=1, arch="x86_64", machine="pc", boot="network"):
    uuid = uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name))
    nics = nics if nics is not None else [nic()]
    boot_el = f"<boot dev='{boot}'/>" if boot else ""
    return f"""<domain type='{dtype}'{root_attrs}>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='{arch}' machine='{machine}'>hvm</type>
    {boot_el}
  </os>
  <devices>{''.join(nics)}{chr(10) + '    ' + devices_extra if devices_extra else ''}
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>{tail}
</domain>
"""
