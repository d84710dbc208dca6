"""A kernel link group with two links, one link taken down under traffic (issue 18).

One boot of two VMs with two NICs each (eth0 + rxe0 on 10.2.0.N, eth1 + rxe1 on 10.2.1.N).
Both VMs put both NICs under one PNET ID (``ksmc.pnet_add``, as ``smc_pnet -a``) and give
eth1 a /16, so that its subnet holds the link group's source address (10.2.0.N): for SMC-Rv2
the kernel takes an alternate RoCE device only then (``smc_pnet_find_alt_roce`` ->
``smc_ib_determine_gid_rcu``: the device's netdev needs an IPv4 address whose subnet
matches ``lgr->saddr``; with eth1 on 10.2.1.N/24 the group stays SINGLE, PNET IDs or not;
see tests/lab/README.md).

VM b runs a kernel AF_SMC server, VM a a kernel client: a first connection before the
second link exists (on rxe0), a second once the group is SYMMETRIC (the server alternates
new connections over the links: rxe1), both sending without pause. Then the wire between
the rxe1s is cut: eth1 down on VM b, then on VM a (over a plain TCP control connection on
eth0). b's kernel finds its link down (``smcr_port_err`` -> ``smcr_link_down``), switches the
connections to the rxe0 link, goes SINGLE and sends DELETE LINK (LOST_PATH); a's follows.
Cutting one end only is not enough on Soft-RoCE: SMC sets the QP retry count to 7, which
rxe takes as retry for ever, so the end whose NIC stays up never sees its pending sends
fail and its DELETE LINK processing waits in ``smc_wr_tx_wait_no_pending_sends`` for good
(tests/lab/README.md). Last, eth1 comes back up on both; whether the kernel adds the link
again is told (it races on TCG), not required. Both VMs run the kernel source (smckernel,
as ``smctop --kernel`` and ``smc-trace record --kernel`` do) for the whole exchange,
recording. The tests hold it to the truth: the bytes (sha256 both ends), genl (smckernel's
SMC_GEN_NETLINK reads, taken by the guest at each step), smc_diag (which link each
connection uses) and the times the guest took each step.

``python tests/lab/test_kernel_two_links.py guest-client|guest-server`` is the guest side.
SMCTOP_LAB_REFRESH_FIXTURE=1 copies VM a's trace lines and raw replies to
tests/unit/fixtures/smckernel/two-links (the unit tests' fixtures).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(PROJECT)]

PORT = 5001
CONTROL_PORT = 5002
UEID = "SMCTOP-LAB"
PNETID = "SMCTOPNET"
CHUNK = 32 * 1024
PAUSE = 0.02  # between a sender's chunks: steady traffic that leaves the VM's one CPU to the kernel
FIXTURES = PROJECT / "tests" / "unit" / "fixtures" / "smckernel" / "two-links"
REFRESH = bool(os.environ.get("SMCTOP_LAB_REFRESH_FIXTURE"))
PY = ".venv/bin/python"
# the kernel source's probes for link groups and links (those per message or per call, cdc_rx
# and sendmsg/recvmsg, stay out: the senders never pause)
PROBES = ("fallback", "decline", "llc_rx", "lgr_type", "lgr_type_asym", "lgr_free", "failover", "failover_end", "link_active",
          "link_clear", "link_down")  # fmt: skip


# ---------------------------------------------------------------------------- the guest side


def _share() -> Path:
    return Path(os.environ["LAB_SHARE"])


def _sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


def _setup_addresses_only() -> None:
    """eth1 readdressed to /16 (see the module's doc)."""
    ip2 = os.environ["LAB_IP2"]
    _sh(f"ip addr del {ip2}/24 dev eth1 && ip addr add {ip2}/16 dev eth1")


def _setup() -> list[dict]:
    """UEID, eth1 readdressed to /16, both NICs under one PNET ID."""
    import ksmc

    _setup_addresses_only()
    ksmc.ueid_add(UEID)
    ksmc.pnet_add(PNETID, eth="eth0", ib="rxe0")
    ksmc.pnet_add(PNETID, eth="eth1", ib="rxe1")
    return ksmc.pnet_show()


def _start_source(share: Path):
    from smckernel.record import KernelRecording
    from smckernel.source import KernelSource
    from stack.events import to_json

    src = KernelSource(rate=2.0, trace=True, probes=PROBES, capture=None, stats_every=None, raw_trace_log=str(share / "trace.txt"))
    out = open(share / "events.jsonl", "w")
    lock = threading.Lock()

    def write(e) -> None:
        with lock:
            out.write(to_json(e) + "\n")
            out.flush()

    src.add_listener(write)
    rec = KernelRecording(str(share / "rec.pcapng"), src)
    src.start()
    return src, rec, out


def _stop_source(share: Path, src, rec, out) -> None:
    src.close()
    stats = rec.close()
    out.close()
    status = src.status()
    status["recorder"] = {"events": stats.events, "dropped_events": stats.dropped_events}
    (share / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True, default=str))


def _genl() -> list[dict]:
    """The link groups with their links, as smckernel reads SMC_GEN_NETLINK."""
    from interop import kernel_lgrs

    return kernel_lgrs()


def _wait_genl(want_type: str, want_links: int, timeout: float = 60.0) -> tuple[float | None, list[dict]]:
    """Poll genl until the one link group has this type and this many ACTIVE links: (the
    monotonic time it was first seen so, the reading), or (None, the last reading)."""
    deadline = time.monotonic() + timeout
    while True:
        groups = _genl()
        t = time.monotonic()
        if len(groups) == 1 and groups[0]["type"] == want_type:
            if sum(lk["state"] == "LINK_ACTIVE" for lk in groups[0]["links"]) == want_links:
                return t, groups
        if t > deadline:
            return None, groups
        time.sleep(0.1)


def _links_of_conns() -> dict[str, dict]:
    """smc_diag's link (id, RoCE device) for every SMC-R socket, by its "local peer" names."""
    from smckernel import diag as kdiag
    from smckernel import kio

    d = kio.Diag()
    try:
        dump = kdiag.parse_dump(d.dump())
    finally:
        d.close()
    return {f"{s.local} {s.peer}": {"link_id": s.lgrinfo.link_id, "ibname": s.lgrinfo.ibname} for s in dump.sockets if s.lgrinfo}


def _save_raw(share: Path, name: str) -> None:
    from smckernel.kio import save_raw
    from smckernel.source import KernelReader

    reader = KernelReader()
    try:
        raw, _ = reader.read()
    finally:
        reader.close()
    save_raw(raw, str(share / "raw" / name))


def _diagnose(share: Path) -> None:
    """The kernel's log, its blocked tasks and the RoCE devices' counters, for the run's record."""
    subprocess.run("echo w > /proc/sysrq-trigger; sleep 0.5; dmesg > dmesg.txt; rdma statistic show > rdma-stat.txt 2>&1", shell=True,
                   cwd=share)  # fmt: skip


class _Sender(threading.Thread):
    """Sends deterministic chunks until stopped, hashing what it sent."""

    def __init__(self, sock: socket.socket, seed: int) -> None:
        super().__init__(daemon=True)
        self.sock, self.seed = sock, seed
        self.sha = hashlib.sha256()
        self.sent = 0
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                chunk = hashlib.sha256(f"{self.seed}/{i}".encode()).digest() * (CHUNK // 32)
                self.sock.sendall(chunk)
                self.sha.update(chunk)
                self.sent += len(chunk)
                i += 1
                time.sleep(PAUSE)
        except OSError as e:
            self.error = f"{type(e).__name__}: {e}"


def guest_server() -> None:
    import ksmc

    share = _share()
    truth: dict = {"pnet": _setup()}
    src, rec, out = _start_source(share)
    lst = ksmc.listen("0.0.0.0", PORT)
    results: list[dict] = []

    def serve(s: socket.socket) -> None:
        sha, n = hashlib.sha256(), 0
        while True:
            data = s.recv(1 << 16)
            if not data:
                break
            sha.update(data)
            n += len(data)
        s.sendall(f"{sha.hexdigest()} {n}\n".encode())
        local, peer = ksmc.names(s)
        results.append({"local": local, "peer": peer, "sha256": sha.hexdigest(), "received": n})
        s.close()

    steps = truth["steps"] = {}

    def control() -> None:
        """The client's orders for this VM's eth1 ("down", "up"), over plain TCP on eth0."""
        with socket.create_server(("0.0.0.0", CONTROL_PORT)) as srv:
            c, _ = srv.accept()
            with c, c.makefile("rw") as f:
                for line in f:
                    order = line.strip()
                    steps[f"{order}_begin"] = time.monotonic()
                    _sh(f"ip link set eth1 {order}")
                    steps[f"{order}_end"] = time.monotonic()
                    f.write("ok\n")
                    f.flush()

    threading.Thread(target=control, daemon=True).start()
    threads = []
    for _ in range(2):
        s = ksmc.accept(lst, timeout=150)
        s.settimeout(200)
        t = threading.Thread(target=serve, args=(s,), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(240)
    truth["received"] = results
    truth["genl_end"] = _genl()
    _diagnose(share)
    time.sleep(1.0)
    _stop_source(share, src, rec, out)
    (share / "truth.json").write_text(json.dumps(truth, indent=1))
    lst.close()


def _start_capture(share: Path) -> subprocess.Popen:
    """tcpdump of both NICs (RoCEv2 and the connections' TCP) into ``share``/wire.pcap: what a
    capture of a real host shows of the failover, for smc-trace to read."""
    err = share / "tcpdump.err"
    # the headers, CLC messages and CDCs (400 bytes), in a 64 MiB buffer written in batches: a TCG
    # guest's tcpdump with a small buffer and per-packet writes dropped half the frames
    capture = subprocess.Popen(["tcpdump", "-i", "any", "-s", "400", "-B", "65536", "-w", str(share / "wire.pcap"),
                                f"udp port 4791 or tcp port {PORT}"], stdout=subprocess.DEVNULL, stderr=err.open("w"))  # fmt: skip
    for _ in range(600):  # a TCG guest under a loaded host can take seconds
        if "listening" in err.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"tcpdump did not start listening within 60 s: {err.read_text()[-500:]}")
    time.sleep(0.5)
    return capture


def guest_client() -> None:
    import ksmc

    share = _share()
    peer = os.environ["LAB_PEER_IP"]
    truth: dict = {"pnet": _setup(), "steps": {}}
    steps = truth["steps"]
    capture = _start_capture(share)
    src, rec, out = _start_source(share)
    senders: list[_Sender] = []
    socks: list[socket.socket] = []

    def open_conn(seed: int) -> None:
        s = ksmc.connect(peer, PORT, timeout=90)
        s.settimeout(120)
        socks.append(s)
        snd = _Sender(s, seed)
        snd.start()
        senders.append(snd)

    ctl = None
    for _ in range(300):
        try:
            ctl = socket.create_connection((peer, CONTROL_PORT), timeout=60)
            break
        except OSError:
            time.sleep(0.1)
    assert ctl is not None, "the server's control port did not answer"
    ctl_f = ctl.makefile("rw")

    def both(order: str) -> None:
        """eth1 down (up) on both VMs, the peer's first: the wire between the rxe1s is cut."""
        steps[f"{order}_begin"] = time.monotonic()
        ctl_f.write(order + "\n")
        ctl_f.flush()
        assert ctl_f.readline().strip() == "ok"
        _sh(f"ip link set eth1 {order}")
        steps[f"{order}_end"] = time.monotonic()

    try:
        open_conn(1)
        steps["sym"], truth["genl_sym"] = _wait_genl("SYM", 2)
        open_conn(2)
        time.sleep(2.0)  # traffic on both links
        truth["conns"] = [dict(zip(("local", "peer"), ksmc.names(s), strict=True)) for s in socks]
        truth["links_before"] = _links_of_conns()
        _save_raw(share, "sym")
        truth["sent_at_down"] = [snd.sent for snd in senders]
        both("down")
        steps["single"], truth["genl_single"] = _wait_genl("SINGLE", 1)
        time.sleep(3.0)  # traffic on the one link left
        truth["links_after"] = _links_of_conns()
        truth["sent_after_failover"] = [snd.sent for snd in senders]
        _save_raw(share, "single")
        both("up")
        # the kernel adds the link again only when a port event finds the group SINGLE and no
        # LLC flow busy (smcr_port_add); under TCG it sometimes loses that race: told, not required
        steps["sym_again"], truth["genl_sym_again"] = _wait_genl("SYM", 2, timeout=15.0)
        time.sleep(1.0)
    finally:
        ctl.close()
        for snd in senders:
            snd.stop.set()
        for snd in senders:
            snd.join(60)
        truth["sent"] = []
        for s, snd in zip(socks, senders, strict=True):
            s.shutdown(socket.SHUT_WR)
            line = b""
            while not line.endswith(b"\n"):
                c = s.recv(1)
                if not c:
                    break
                line += c
            s.close()
            truth["sent"].append({"sha256": snd.sha.hexdigest(), "sent": snd.sent, "error": snd.error, "peer_says": line.decode().strip()})
        time.sleep(1.5)
        truth["genl_end"] = _genl()
        _diagnose(share)
        _stop_source(share, src, rec, out)
        capture.send_signal(signal.SIGINT)  # tcpdump writes what it holds and ends
        capture.wait(30)
        (share / "truth.json").write_text(json.dumps(truth, indent=1))


if __name__ == "__main__":
    {"guest-client": guest_client, "guest-server": guest_server}[sys.argv[1]]()
    sys.exit(0)


# ---------------------------------------------------------------------------- the host side

import lab  # noqa: E402
import pytest  # noqa: E402

from stack import events as ev  # noqa: E402

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def run() -> dict:
    a, b = lab.run_pair(f"{PY} tests/lab/test_kernel_two_links.py guest-client", f"{PY} tests/lab/test_kernel_two_links.py guest-server",
                        nics=2, timeout=240)  # fmt: skip
    for r in (a, b):
        r.check()
    out: dict = {"a": a, "b": b}
    for side, r in (("a", a), ("b", b)):
        out[side + "_events"] = [ev.check_record(json.loads(line)) for line in (r.share / "events.jsonl").read_text().splitlines()]
        out[side + "_status"] = json.loads((r.share / "status.json").read_text())
        out[side + "_truth"] = json.loads((r.share / "truth.json").read_text())
    if REFRESH:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for name in ("sym", "single"):
            shutil.rmtree(FIXTURES / name, ignore_errors=True)
            shutil.copytree(a.share / "raw" / name, FIXTURES / name)
        for r, name in ((a, "trace-client.txt"), (b, "trace-server.txt")):  # without the per-call tracepoints (thousands)
            kept = [x for x in (r.share / "trace.txt").read_text().splitlines(keepends=True) if not ("smc_tx_sendmsg:" in x or "smc_rx_recvmsg:" in x)]
            (FIXTURES / name).write_text("".join(kept))
        for side in ("a", "b"):
            (FIXTURES / f"steps-{side}.json").write_text(json.dumps(out[side + "_truth"]["steps"], indent=1))
    return out


def _of(events: list, kind: str, **match) -> list:
    return [e for e in events if e.kind == kind and all(e.fields.get(k) == v for k, v in match.items())]


def test_both_kernels_took_the_pnet_table_and_formed_a_symmetric_group_with_two_links(run) -> None:
    for side in ("a", "b"):
        truth = run[side + "_truth"]
        assert truth["pnet"] == [
            {"pnetid": PNETID, "eth": "eth0", "ib": None, "ibport": None},
            {"pnetid": PNETID, "eth": None, "ib": "rxe0", "ibport": 1},
            {"pnetid": PNETID, "eth": "eth1", "ib": None, "ibport": None},
            {"pnetid": PNETID, "eth": None, "ib": "rxe1", "ibport": 1},
        ], truth["pnet"]
    a = run["a_truth"]
    assert a["steps"]["sym"] is not None, f"no SYMMETRIC group with two links within 60 s: {a['genl_sym']}"
    (g,) = a["genl_sym"]
    assert (g["role"], g["type"], g["pnet_id"].strip()) == ("client", "SYM", PNETID), g
    assert sorted((lk["ib_dev"], lk["state"]) for lk in g["links"]) == [("rxe0", "LINK_ACTIVE"), ("rxe1", "LINK_ACTIVE")], g
    by_dev = {lk["ib_dev"]: lk for lk in g["links"]}
    # rxe1's link runs between the eth1 addresses (its RoCEv2 GIDs), rxe0's between eth0's
    assert by_dev["rxe0"]["gid"].endswith("ffff:0a02:0001") and by_dev["rxe0"]["peer_gid"].endswith("ffff:0a02:0002"), by_dev
    assert by_dev["rxe1"]["gid"].endswith("ffff:0a02:0101") and by_dev["rxe1"]["peer_gid"].endswith("ffff:0a02:0102"), by_dev


def test_the_second_connection_ran_on_the_second_link_and_failed_over_to_the_first(run) -> None:
    a = run["a_truth"]
    names = [f"{c['local']} {c['peer']}" for c in a["conns"]]
    before = [a["links_before"][n]["ibname"] for n in names]
    after = [a["links_after"][n]["ibname"] for n in names]
    assert before == ["rxe0", "rxe1"], a["links_before"]  # the server alternates new connections over a SYM group's links
    assert after == ["rxe0", "rxe0"], a["links_after"]


def _stream_sha(seed: int, n: int) -> str:
    """sha256 of the first n bytes a _Sender with this seed sends."""
    sha, i, left = hashlib.sha256(), 0, n
    while left > 0:
        chunk = hashlib.sha256(f"{seed}/{i}".encode()).digest() * (CHUNK // 32)
        sha.update(chunk[:left])
        left -= len(chunk)
        i += 1
    return sha.hexdigest()


def _last_cursor(events: list, local: str, peer: str, side: str) -> dict:
    (cid,) = [e.conn for e in _of(events, "conn.open") if (e.fields.get("local"), e.fields.get("peer")) == (local, peer)]
    return [e.fields for e in _of(events, "conn.cursor", side=side, source="snapshot") if e.conn == cid][-1]


def test_every_byte_arrived_intact_across_the_failover(run) -> None:
    """What the server read is exactly the start of what the client sent, for each
    connection; and all of it, unless the kernel lost a consumer-cursor update in the
    failover (seen in two runs of five): the server's last CDC announced a consumer
    cursor the client never received, so the client's kernel, seeing the server's RMB full,
    never sent its last bytes (smcr_cdc_msg_send_validation re-announces only the sequence
    number, not the cursors, and smc_cdc_msg_send counts a cursor as confirmed once posted).
    That case is an expected failure, proven by both kernels' own cursors."""
    a = run["a_truth"]
    sent, received = a["sent"], {r["peer"]: r for r in run["b_truth"]["received"]}
    assert len(sent) == len(received) == 2
    short = []
    for seed, (s, c) in enumerate(zip(sent, a["conns"], strict=True), start=1):
        assert s["sent"] > 0 and s["sha256"] == _stream_sha(seed, s["sent"]), s  # (the host regenerates the stream)
        r = received[c["local"]]
        assert r["received"] <= s["sent"] and r["sha256"] == _stream_sha(seed, r["received"]), (s, r)  # a prefix, unaltered
        assert s["peer_says"] == f"{r['sha256']} {r['received']}"
        if r["received"] < s["sent"] or s["error"] is not None:
            # the stall's signature; then the sender was still blocked at the end, and its
            # sendall() failed with EPIPE when the test shut the connection down
            seen = _last_cursor(run["a_events"], c["local"], c["peer"], "rx")["cons"]  # the server's cons, as the client last got it
            announced = _last_cursor(run["b_events"], c["peer"], c["local"], "tx")["cons"]  # as the server last sent it
            assert seen != announced and s["error"] in (None, "BrokenPipeError: [Errno 32] Broken pipe"), (s, r, seen, announced)
            short.append(f"connection {seed}: {r['received']} of {s['sent']}+ bytes; server announced cons {announced}, client got {seen}")
    # both connections kept sending through the failover (the second one moved off the lost link)
    assert all(after > at_down for at_down, after in zip(a["sent_at_down"], a["sent_after_failover"], strict=True)), a
    if short:
        pytest.xfail("the kernel lost a consumer-cursor update in the failover: " + "; ".join(short))


def test_smc_trace_reads_each_byte_once_from_a_capture_of_the_failover(run) -> None:
    """tcpdump of the client's two NICs through the failover: each connection's bytes as
    smc-trace derives them from the wire (the client's producer cursor, not its WRITEs: the
    kernel writes again, on the link left, what the lost one may not have delivered; 32,768
    bytes in one run) are what the server read, and each end received what the other sent;
    what was written again is read off the wire as the kernel's validation CDC names it, and
    smctop's replay of the capture counts the same."""
    from dissectors.capture import read_events
    from dissectors.summary import summarize
    from smctop.model import Model

    a = run["a_truth"]
    counts = (run["a"].share / "tcpdump.err").read_text()
    assert "\n0 packets dropped by kernel" in counts, counts  # what follows holds for a whole capture
    events = list(read_events(str(run["a"].share / "wire.pcap")))
    d = summarize(events).to_dict()
    received = {r["peer"]: r["received"] for r in run["b_truth"]["received"]}
    model = Model()
    for e in events:
        model.feed(e)
    rewound = {e.conn: e.get("rewound") for e in events if e.kind == "conn.cursor" and e.get("rewound")}
    for c, s in zip(a["conns"], a["sent"], strict=True):
        ends = {x["role"]: x for x in d["conns"] if {x["local"], x["peer"]} == {c["local"], c["peer"]}}
        client, server = ends["client"], ends["server"]
        assert client["moved"] == server["received"] == received[c["local"]], (c, client, server, rewound)
        # the WRITEs on the wire are those bytes and what a failover wrote a second time
        assert client["bytes_written"] - client["moved"] == rewound.get(client["conn"], 0), (client, rewound)
        answer = len(s["peer_says"]) + 1  # the server's one line at the end: "sha256 count\n"
        assert client["received"] == server["moved"] == answer, (client, server)
        m = model.conns[(client["host"], client["conn"])]
        assert m.ev_tx == received[c["local"]], (m.ev_tx, rewound)


def _gid(text) -> str:
    """A GID as text of either form (IPv6 text, or 32 hex digits) made comparable."""
    import ipaddress

    text = str(text)
    return str(ipaddress.IPv6Address(bytes.fromhex(text) if len(text) == 32 and ":" not in text else text))


def test_the_capture_tells_the_link_groups_types_and_links_as_each_kernel_does(run) -> None:
    """From the capture alone (CLC, CONFIRM LINK, DELETE LINK), each end's link group goes
    through the types its kernel's own source told (SINGLE, SYM when rxe1's link was
    confirmed, SINGLE after the failover's DELETE LINK), and ends with the links genl
    shows active, with the GIDs genl names."""
    from dissectors.capture import read_events

    events = list(read_events(str(run["a"].share / "wire.pcap")))
    addr = {"a": "10.2.0.1", "b": "10.2.0.2"}
    for side in ("a", "b"):
        told = [e.get("new") for e in run[side + "_events"] if e.kind == "lgr.state"]
        changes = [e for e in events if e.kind == "lgr.state" and e.host == addr[side]]
        derived = [e.get("new") for e in changes]
        # tcpdump stops after the kernel source and genl were last read: a group the capture
        # saw end after that (DELETE LINK as the run winds down) is not in what they told
        until = changes[-1].t if len(derived) == len(told) + 2 and derived[-1] == "NONE" != told[-1] else None
        if until is not None:
            derived.pop()
        assert derived[0] == "NONE" and told, (derived, told)  # created, as our stack tells it
        assert derived[1:] == told, (side, derived, told)
        (g,) = run[side + "_truth"]["genl_end"]
        active = {lk["id"]: lk for lk in g["links"] if lk.get("state") in ("ACTIVE", "LINK_ACTIVE", 2)}
        state: dict[int, str] = {}
        gids: dict[int, tuple[str, str]] = {}
        for e in events:
            if until is not None and e.t >= until:
                break
            if e.host == addr[side] and e.kind == "link.state":
                state[e.link] = e.get("new")
            elif e.host == addr[side] and e.kind == "link.event" and e.get("event") == "added":
                gids[e.link] = (_gid(e.get("gid")), _gid(e.get("peer_gid")))
        up = {lid for lid, st in state.items() if st == "LINK_ACTIVE"}
        assert active and up == set(active), (side, state, g["links"])
        for lid, lk in active.items():  # our GID and the peer's, as the kernel has them
            assert gids[lid] == (_gid(lk["gid"]), _gid(lk["peer_gid"])), (side, lid, gids[lid], lk)


def test_the_capture_reads_the_same_with_every_frame_decoded_whole(run, monkeypatch) -> None:
    """The frames in the middle of an RDMA WRITE are read from fixed offsets
    (dissectors/derive.py): over the kernel's failover capture the events and the RC
    analysis are what decoding every frame whole gives."""
    from dissectors import derive
    from dissectors.capture import read_events
    from dissectors.roce_analysis import RoceAnalysis

    out = []
    for fast in (True, False):
        monkeypatch.setattr(derive, "FAST", fast)
        roce = RoceAnalysis()
        out.append(([ev.to_json(e) for e in read_events(str(run["a"].share / "wire.pcap"), roce=roce)], roce.to_dict()))
    assert out[0] == out[1] and out[0][1]["frames"] > 10_000


def test_genl_shows_single_after_the_link_went_down(run) -> None:
    a = run["a_truth"]
    steps = a["steps"]
    assert steps["single"] is not None, f"the group did not become SINGLE with one link within 60 s: {a['genl_single']}"
    assert steps["down_begin"] < steps["single"] < steps["up_begin"]
    (g,) = a["genl_single"]
    # (a link on rxe1 may be ACTIVATING: the server tries an asymmetric one at once, which fails)
    assert g["type"] == "SINGLE" and [lk["ib_dev"] for lk in g["links"] if lk["state"] == "LINK_ACTIVE"] == ["rxe0"], g
    # both ends agree at the end: SYM with two links again, or still SINGLE (see the guest's note)
    (ga,), (gb,) = a["genl_end"], run["b_truth"]["genl_end"]
    assert ga["type"] == gb["type"] and len(ga["links"]) == len(gb["links"]) == (2 if ga["type"] == "SYM" else 1), (ga, gb)
    print(f"eth1 back up: the group {'is SYMMETRIC again' if steps['sym_again'] else 'stayed SINGLE for 15 s'}")


def _rxe1_link(run) -> tuple[str, int]:
    """VM a's link group id and its rxe1 link's id (link ids are the same on both ends: the server numbers them)."""
    (g,) = run["a_truth"]["genl_sym"]
    (lk,) = [lk for lk in g["links"] if lk["ib_dev"] == "rxe1"]
    return g["id"], lk["id"]


LOST_PATH = 0x00010000  # SMC_LLC_DEL_LOST_PATH


def _told_the_failover(events: list, steps: dict, gid: str, lid: int, first: bool, end_type: str) -> None:
    """The kernel source's events on one VM between its eth1 going down and coming back.
    ``first``: this VM's eth1 went down first, so its kernel found the link down itself
    (smcr_port_err -> smcr_link_down); the other learns it from that one's DELETE LINK
    (or, if it is slower than its own port, finds it down too). Either way: the connections
    switched off the rxe1 link (smc_switch_conns), the link deleted with the DELETE LINK
    reason LOST_PATH, the group's type SYM -> SINGLE exactly once, all after eth1 went
    down; SINGLE -> SYM after it came back if genl shows it (``end_type``), and nothing
    told twice or turned back."""
    t_down, t_up = steps["down_begin"], steps["up_begin"]
    assert not [e for e in events if e.kind == "link.event" and e.fields["event"] in ("down", "deleted") and e.t < t_down]
    in_down = [e for e in events if t_down <= e.t < t_up]
    mine = [e for e in in_down if e.lgr == gid and e.link == lid]
    downs = _of(mine, "link.event", event="down")
    told = [e for e in _of(in_down, "llc.msg", dir="rx", link_num=lid, reason=LOST_PATH) if e.lgr == gid]
    if first:
        assert downs, [e for e in in_down if e.kind == "link.event"]
    assert downs or told, [e for e in in_down if e.kind in ("link.event", "llc.msg")]
    cause = (downs + told)[0]
    for d in downs:
        assert d.fields["reason"].startswith("smcr_link_down from "), d
    (fo,) = _of(mine, "link.event", event="failover_begin")
    assert fo.fields["reason"] in ("link down", "device error"), fo  # (smc_switch_conns' is_dev_err)
    (deleted,) = _of(mine, "link.event", event="deleted")
    assert (deleted.fields["reason"], deleted.fields["orderly"]) == (LOST_PATH, True), deleted
    assert deleted.fields["reason_text"].startswith("0x00010000 LOST_PATH"), deleted
    changes = [e for e in events if e.kind == "lgr.state" and e.lgr == gid]
    (single,) = [e for e in changes if t_down <= e.t < t_up]
    assert (single.fields["old"], single.fields["new"], single.fields["crit"]) == ("SYM", "SINGLE", True), changes
    assert single.fields["source"] == "probe" and single.fields["cause"] == "smcr_lgr_set_type", single
    assert t_down <= cause.t <= fo.t <= single.t and cause.t <= deleted.t, (cause, fo, single, deleted)
    seq = [(e.fields["old"], e.fields["new"]) for e in changes if e.t < t_up]
    assert seq == [("NONE", "SINGLE"), ("SINGLE", "SYM"), ("SYM", "SINGLE")], changes
    # after eth1 came back: SINGLE -> SYM exactly when genl ended SYM
    back = [(e.fields["old"], e.fields["new"]) for e in changes if e.t >= t_up]
    assert back == ([("SINGLE", "SYM")] if end_type == "SYM" else []), (end_type, changes)


def test_the_servers_kernel_source_told_its_link_down_the_failover_and_the_type_changes_when_they_happened(run) -> None:
    """VM b's eth1 went down first; its times are its own monotonic clock, held to its own steps."""
    b_truth = run["b_truth"]
    (g,) = b_truth["genl_end"]
    _, lid = _rxe1_link(run)  # link ids are the server's numbers, the same on both ends
    _told_the_failover(run["b_events"], b_truth["steps"], g["id"], lid, first=True, end_type=g["type"])


def test_the_clients_kernel_source_told_the_peers_delete_link_the_failover_and_the_type_changes(run) -> None:
    gid, lid = _rxe1_link(run)
    steps = run["a_truth"]["steps"]
    (g,) = run["a_truth"]["genl_end"]
    _told_the_failover(run["a_events"], steps, gid, lid, first=False, end_type=g["type"])


def test_the_recordings_hold_every_event(run) -> None:
    from dissectors.capture import read_events

    for side in ("a", "b"):
        st = run[side + "_status"]["recorder"]
        assert st["events"] > 0 and not st["dropped_events"], st
        recorded = list(read_events(str(run[side].share / "rec.pcapng")))
        assert len(recorded) == len(run[side + "_events"]), (side, len(recorded), len(run[side + "_events"]))
        kinds = {e.kind for e in recorded}
        assert {"lgr.state", "link.event", "link.state"} <= kinds, kinds
