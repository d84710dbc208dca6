"""The Wireshark plugin names the owner of the QP a RoCE frame goes to (host, link, link
group) from a recording's event records: ``link.event added`` gives a link's QPN and its
device's name, and frames name a QP by the address they go to. A soft device is named by its
address by default, so the name did as the address; a device named otherwise (a pyverbs
device is rxe0, a soft device may be given a name) needs its address, which the records'
snapshot gives (``stats``: each device's GID, and its VLANs' GIDs)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import tshark
from support.stacks import addrs, echo_exchanges, run

from dissectors.recorder import Recorder
from stack.core.config import SmcConfig, Timeouts
from stack.runtime import DeviceSpec, Stack, StackConfig

pytestmark = pytest.mark.oracle

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "dissectors" / "wireshark" / "smctop.lua"


def record_named_devices(path: str) -> tuple[list, dict[str, str]]:
    """Two stacks whose soft devices are named as a pyverbs device would be, not by their
    address; one connection echoing a few KiB. Returns the stacks' events and host -> address."""
    ca, sa = addrs()

    def cfg(host: str, addr: str, name: str) -> StackConfig:
        return StackConfig(SmcConfig(host=host, timeouts=Timeouts(clc_wait=3.0)), (DeviceSpec("soft", name, addr, None, 1024),))

    async def main():
        a, b = Stack(cfg("client", ca, "roce_a")), Stack(cfg("server", sa, "roce_b"))
        await a.start()
        await b.start()
        try:
            events = []
            rec = Recorder(path)
            events.extend((rec.attach(a), rec.attach(b)))  # each stack's state (its devices) as the recording starts
            a.bus.listen(events.append), b.bus.listen(events.append)
            await echo_exchanges(a, b, ca, sa, 1)
            await asyncio.sleep(0.3)
            rec.close()
            return list(events)
        finally:
            await a.close()
            await b.close()

    return run(main()), {"client": ca, "server": sa}


def test_frames_name_the_owner_of_their_qp_when_devices_are_not_named_by_address(tmp_path):
    path = str(tmp_path / "named.pcapng")
    events, addr = record_named_devices(path)
    links = {(addr[e.host], e.get("qpn")): f"{e.host} link {e.link} of lgr {e.lgr}" for e in events if e.kind == "link.event" and e.get("event") == "added"}
    assert {e.get("device") for e in events if e.kind == "link.event" and e.get("event") == "added"} == {"roce_a", "roce_b"}
    assert {a for a, _ in links} == set(addr.values()), links  # (the server's ADD LINK makes a third, which the client rejects)
    proc = tshark.run(["-n", "-X", f"lua_script:{PLUGIN}", "-r", path, "-Y", "infiniband", "-T", "json", "--no-duplicate-keys"])
    assert proc.returncode == 0, proc.stderr
    assert "Lua" not in proc.stderr, proc.stderr
    named: dict[str, int] = {}
    for pkt in json.loads(proc.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        ib = tshark.flatten(layers.get("infiniband", {}))
        key = (layers["ip"]["ip.dst"], tshark.num(ib["infiniband.bth.destqp"]))
        qp = tshark.flatten({"smctop": layers.get("smctop", {})}).get("smctop.qp")  # one smctop tree or several
        qp = qp[0] if isinstance(qp, list) else qp
        assert key in links, key  # every RoCE frame goes to one of the two links' QPs
        assert qp is not None and qp.endswith(", " + links[key]), (layers["frame"]["frame.number"], qp, links[key])
        named[links[key]] = named.get(links[key], 0) + 1
    assert {label.split()[0] for label in named} == {"client", "server"} and all(n > 2 for n in named.values()), named  # both ways
