"""Both sides at once (issue 18 item 5): ``smctop --attach PATH --kernel`` watches our stack
through its control socket and the kernel on this host together, so a connection's two ends
appear side by side. The kernel part is the recorded kernel replies of the lab (this host
has no SMC module); the stack part is a real stack with its control socket."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.stacks import addrs

from smckernel import kio
from smckernel import model as kmodel
from smckernel.tracker import Tracker
from smctop.model import Model
from smctop.sources import AttachSource, CombinedSource, KernelTuiSource, SourceError
from stack.core.config import SmcConfig
from stack.runtime import DeviceSpec, Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "unit" / "fixtures" / "smckernel"
DEV = addrs()[0]  # per run: two runs at once never share a device


class _KernelReplies:
    """What KernelTuiSource uses of smckernel.source.KernelSource, giving the events a
    tracker makes of the lab's recorded kernel replies."""

    def __init__(self) -> None:
        snap = kmodel.from_kernel(kio.load_raw(str(FIX / "client-open")), 10.0, "kern")
        self.events, self.listeners, self.notes, self.host = Tracker("kern", stats_every=1.0).snapshot(snap), [], [], "kern"

    def add_listener(self, fn) -> None:
        self.listeners.append(fn)

    def start(self) -> None:
        for e in self.events:
            for fn in self.listeners:
                fn(e)

    def close(self) -> None:
        pass


def test_one_model_holds_the_attached_stack_and_the_kernel_and_actions_go_to_the_stack(tmp_path):
    path = str(tmp_path / "h.sock")

    async def go():
        cfg = StackConfig(SmcConfig(host="solo"), (DeviceSpec("soft", DEV, DEV, None, 4096),), control_path=path, snapshot_interval=0.2)
        async with Stack(cfg) as stack:
            attach = AttachSource([path])
            src = CombinedSource([attach, KernelTuiSource(factory=_KernelReplies)])
            await src.start()
            m = Model()
            try:
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    src.poll(m)
                    if attach.devices.get(path) and "kern" in m.hosts:
                        break
                assert {"solo", "kern"} <= set(m.hosts)
                assert src.describe() == "attach solo + kernel kern"
                kernel_conns = [c for c in m.conns.values() if c.host == "kern"]
                assert len(kernel_conns) == 3 and {c.mode for c in kernel_conns} == {"SMCR", "TCP"}
                assert src.can == {"fail_link", "restore_link", "decline"}  # the kernel part is watched, not driven
                assert f"port of {DEV} pulled" in await src.fail_link()
                for _ in range(50):
                    await asyncio.sleep(0.05)
                    src.poll(m)
                    if not stack.rdma.devs[DEV].port_up:
                        break
                assert not stack.rdma.devs[DEV].port_up
                await src.restore_link()
                with pytest.raises(SourceError, match="traffic is not available"):
                    await src.set_traffic(True)
            finally:
                await src.stop()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_a_part_that_cannot_start_stops_the_ones_that_did(tmp_path):
    path = str(tmp_path / "h.sock")

    def broken():
        raise kio.KernelUnavailable(2, "the smc module is not loaded")

    async def go():
        dev = addrs()[0]
        cfg = StackConfig(SmcConfig(host="solo"), (DeviceSpec("soft", dev, dev, None, 4096),), control_path=path)
        async with Stack(cfg):
            attach = AttachSource([path])
            src = CombinedSource([attach, KernelTuiSource(factory=broken)])
            with pytest.raises(SourceError, match="the smc module is not loaded"):
                await src.start()
            assert all(t.done() for t in attach.tasks)  # the attached socket was let go

    asyncio.run(asyncio.wait_for(go(), 60))


def _smctop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from smctop.app import main; sys.exit(main(sys.argv[1:]))", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip


def test_kernel_with_replay_is_a_usage_error():
    r = _smctop("--kernel", "--replay", "x.pcapng")
    assert r.returncode == 2 and "--kernel goes alone or with --attach" in r.stderr and "Traceback" not in r.stderr


def test_once_prints_the_kernel_and_the_attached_stack_in_one_document(tmp_path):
    """`smctop --attach P --kernel --once --json` (the kernel part from saved replies, as
    --from-raw allows): one document, the kernel's connections and the stack's."""
    path = str(tmp_path / "h.sock")

    async def go():
        dev = addrs()[0]
        cfg = StackConfig(SmcConfig(host="solo"), (DeviceSpec("soft", dev, dev, None, 4096),), control_path=path)
        async with Stack(cfg):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, lambda: _smctop("--attach", path, "--kernel", "--once", "--json", "--from-raw", str(FIX / "client-open")))

    r = asyncio.run(asyncio.wait_for(go(), 120))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["hosts"]) == 2 and "solo" in doc["hosts"], doc["hosts"]
    kernel_host = next(h for h in doc["hosts"] if h != "solo")
    kernel = [c for c in doc["connections"] if c["host"] == kernel_host]
    assert sorted(c["local"] for c in kernel) == ["10.2.0.1:36452", "10.2.0.1:36464", "10.2.0.1:36476"]
    assert "solo" in doc["stats"] and kernel_host in doc["stats"]


def test_smctop_gives_the_kernel_sources_drain_a_short_limit_at_quit():
    """smckernel's close lets the trace reader catch up for up to a minute (for a recorder);
    smctop has closed its recording before it stops the source, so q must not wait that long."""
    from smctop.sources import QUIT_DRAIN

    made: list[_KernelReplies] = []

    def make():
        made.append(_KernelReplies())
        return made[-1]

    async def go():
        src = KernelTuiSource(factory=make)
        await src.start()
        await src.stop()

    asyncio.run(go())
    assert made[0].drain_timeout == QUIT_DRAIN <= 5
