"""`smc-trace record --kernel` against the kernel's own counters, several network namespaces
at once, and smctop --kernel in a real terminal (issue 18).

One boot of two VMs. Each VM reads the kernel's statistics through generic netlink
(SMC_NETLINK_GET_STATS and GET_FBACK_STATS: the counters `smcr stats` prints, per network
namespace), starts `smc-trace record --kernel` (VM a with `--netns all`: its own namespace
and two more, ns1 and ns2, joined by a veth pair), and only then moves traffic: VM a opens
two SMC-R connections to VM b's AF_SMC server (UEID SMCTOP-LAB on both), then a third that
falls back (b has dropped its UEID: it declines with NOSMCDEV, a falls back with PEERDECL);
an AF_SMC client in ns1 connects to an AF_SMC server in ns2. SMC-R between two namespaces of
one VM is not possible on this kernel: rxe's UDP tunnel socket lives in the initial
namespace, so with an rxe device on each veth end the handshake gets as far as CONFIRM LINK
and falls back (PEERDECL/TIMEOUT_CL, tried in the lab); without one it falls back at once.
Either way each of ns1 and ns2 has a connection, a fallback and counters of its own. While
everything is open VM a reads all three namespaces with `smctop --kernel --netns all --once
--json` and `python -m smckernel`; with
SMCTOP_LAB_SCREENSHOTS=1 it also runs `smctop --kernel` in tmux at 80x24 and 200x50 while
one connection streams, and the host test copies the panes to docs/screenshots/kernel-*.txt.
VM a stops its recorder (SIGINT, as Ctrl-C) and reads the counters again before the
screenshots (a tracepoint probe is taken once on the whole system: smctop, a second process,
would not get it while the recorder runs), VM b after the close.

The host then runs `smc-trace summary --json` on each recording and holds it to the
difference of the counters, end minus start, where both count the same thing:

* SMC-R connections by role and SMC version (summary: connections in mode SMCR with their
  role and version; kernel: clnt_v1_succ, clnt_v2_succ, srv_v1_succ, srv_v2_succ);
* fallbacks by role and by reason code (summary: connections in mode TCP with their role
  and reason, and its fallbacks list; kernel: the fallback totals per role and the
  per-reason counts of SMC_NETLINK_GET_FBACK_STATS);
* payload bytes sent and received over SMC-R (summary: bytes_sent / bytes_received, the
  sums of what each send and receive call moved, from the smc_tx_sendmsg / smc_rx_recvmsg
  tracepoints; kernel: smcr tx_bytes / rx_bytes, counted in the same two functions).

What cannot be compared: the summary's bytes_written (RDMA WRITE payload per connection)
is 0 for a kernel capture, since an RDMA WRITE frame names a QP and the peer's buffer
address, which smc_diag does not give, so it is tied to no connection; the request counts
(tx_cnt, rx_cnt), buffer usage, buffer-full and size buckets, cork/nodelay/splice/urgent
calls and handshake errors have no counterpart in the summary (no event carries them).

``python tests/lab/test_kernel_record.py guest-client|guest-server`` is the guest side.
"""

from __future__ import annotations

import json
import os
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

PORT = 5003
UEID = "SMCTOP-LAB"
PLAN = [(150_000, 60_000), (90_000, 120_000)]  # (client sends, server answers) per SMC-R connection
FALLBACK = (5_000, 5_000)
PEERDECL, NOSMCDEV = 0x05000000, 0x03030000
NS_PORT = 5004
NS = {"ns1": "10.3.0.1", "ns2": "10.3.0.2"}  # VM a's other namespaces: a client in ns1, a server in ns2
NS_PLAN = (40_000, 30_000)
SHOTS = bool(os.environ.get("SMCTOP_LAB_SCREENSHOTS"))  # refresh docs/screenshots/kernel-*.txt
SCREENS = {"kernel-80x24.txt": (80, 24), "kernel-wide.txt": (200, 50)}
BIN = PROJECT / ".venv" / "bin"


# ---------------------------------------------------------------------------- the guest side


def _share() -> Path:
    return Path(os.environ["LAB_SHARE"])


def _recv_exactly(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = s.recv(min(1 << 16, n - got))
        if not chunk:
            raise EOFError(f"end of file after {got} of {n} bytes")
        got += len(chunk)


def _line(s: socket.socket) -> str:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            raise EOFError("end of file in the header line")
        buf += c
    return buf.decode().strip()


def _counters(netns: str | None = None) -> dict:
    """The kernel's own counters now, through generic netlink (what `smcr stats` reads)."""
    from smckernel.source import snapshot_once

    snap = snapshot_once(netns)
    return {"stats": snap.stats, "fallbacks": snap.fallbacks}


def _start_recorder(share: Path, *extra: str) -> subprocess.Popen:
    err = share / "record.err"
    p = subprocess.Popen([str(BIN / "smc-trace"), "record", "--kernel", "-w", str(share / "rec.pcapng"), "--rate", "2", *extra],
                         stdout=open(share / "record.out", "w"), stderr=open(err, "w"))  # fmt: skip
    deadline = time.monotonic() + 180
    while "recording the kernel's SMC-R" not in (err.read_text() if err.exists() else ""):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"smc-trace record did not start (rc {p.poll()}): {err.read_text()}")
        time.sleep(0.2)
    return p


def _stop_recorder(p: subprocess.Popen) -> None:
    time.sleep(2.0)  # a few polls (2 a second) with everything closed
    p.send_signal(signal.SIGINT)
    rc = p.wait(120)
    if rc != 0:
        raise RuntimeError(f"smc-trace record exited {rc}")


def guest_server() -> None:
    import ksmc

    share = _share()
    ksmc.ueid_add(UEID)
    truth: dict = {"start": _counters()}
    rec = _start_recorder(share)
    lst = ksmc.listen("0.0.0.0", PORT)
    socks = []
    for _ in range(len(PLAN) + 1):
        s = ksmc.accept(lst, timeout=180)
        s.settimeout(600)  # the client runs readers and, for screenshots, two TUIs before it closes
        up, down, note = _line(s).split()
        _recv_exactly(s, int(up))
        if note == "drop-ueid":
            ksmc.ueid_remove(UEID)  # the next connection falls back: this side declines (NOSMCDEV)
        s.sendall(os.urandom(int(down)))
        socks.append(s)
    received = []
    for s in socks:  # the client closes first (after what it streams for the screenshots); then this side
        n = 0
        while chunk := s.recv(1 << 16):
            n += len(chunk)
        received.append(n)
        s.close()
    lst.close()
    truth["drained"] = received
    _stop_recorder(rec)
    truth["end"] = _counters()
    ksmc.ueid_flush()
    (share / "truth.json").write_text(json.dumps(truth, indent=1))


def _screenshots(share: Path, stream: socket.socket) -> dict:
    """smctop --kernel in tmux at each size while ``stream`` moves data; each pane when it
    shows the SMC-R connections (and a rate), as text."""
    stop = threading.Event()
    sent = [0]

    def pump() -> None:
        block = os.urandom(1 << 15)
        while not stop.is_set():
            stream.sendall(block)
            sent[0] += len(block)
            time.sleep(0.01)

    if not os.path.ismount("/dev/pts"):  # the lab's init mounts no devpts: tmux needs a pseudo-terminal
        os.makedirs("/dev/pts", exist_ok=True)
        subprocess.run(["mount", "-t", "devpts", "-o", "ptmxmode=0666", "devpts", "/dev/pts"], check=True)
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    sock = f"smctop-shot-{os.getpid()}"
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    notes = {}
    try:
        for name, (w, h) in SCREENS.items():
            subprocess.run([*tmux, "new-session", "-d", "-s", "k", "-x", str(w), "-y", str(h), f"cd {PROJECT} && {BIN / 'smctop'} --kernel; sleep 600"],
                           check=True, env={**os.environ, "TERM": "xterm-256color", "SHELL": "/bin/sh"})  # fmt: skip
            deadline = time.monotonic() + 240
            text = ""
            while time.monotonic() < deadline:
                time.sleep(2.0)
                text = subprocess.run([*tmux, "capture-pane", "-p", "-t", "k"], capture_output=True, text=True).stdout
                if text.count("SMCR") >= len(PLAN) + 1 and "/s" in text:  # the rows, and a rate computed
                    break
            time.sleep(6.0)  # a few more one-second samples: the rates settle
            text = subprocess.run([*tmux, "capture-pane", "-p", "-t", "k"], capture_output=True, text=True).stdout
            (share / name).write_text("\n".join(line.rstrip() for line in text.rstrip("\n").split("\n")) + "\n")
            subprocess.run([*tmux, "send-keys", "-t", "k", "q"])
            time.sleep(3.0)
            subprocess.run([*tmux, "kill-server"])
            notes[name] = (w, h)
    finally:
        stop.set()
        t.join(30)
    return {"screens": notes, "streamed": sent[0]}


def _namespaces() -> None:
    for cmd in ("ip netns add ns1", "ip netns add ns2", "ip link add v1 type veth peer name v2", "ip link set v1 netns ns1",
                "ip link set v2 netns ns2", f"ip -n ns1 addr add {NS['ns1']}/24 dev v1", f"ip -n ns2 addr add {NS['ns2']}/24 dev v2",
                "ip -n ns1 link set v1 up", "ip -n ns2 link set v2 up", "ip -n ns1 link set lo up", "ip -n ns2 link set lo up"):  # fmt: skip
        subprocess.run(cmd.split(), check=True)


def _in_ns(ns: str, mode: str) -> subprocess.Popen:
    """This script in network namespace ``ns`` (``guest-ns-server`` or ``guest-ns-client``)."""
    return subprocess.Popen(["ip", "netns", "exec", ns, str(BIN / "python"), __file__, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=PROJECT)  # fmt: skip


def guest_ns_server() -> None:
    """In ns2: one AF_SMC connection, NS_PLAN's bytes each way, then until the client closes."""
    import ksmc

    lst = ksmc.listen(NS["ns2"], NS_PORT)
    print("listening", flush=True)
    s = ksmc.accept(lst, timeout=120)
    s.settimeout(600)
    _recv_exactly(s, NS_PLAN[0])
    s.sendall(os.urandom(NS_PLAN[1]))
    while s.recv(1 << 16):
        pass
    s.close()
    lst.close()


def guest_ns_client() -> None:
    """In ns1: connects to ns2, moves NS_PLAN's bytes, prints its addresses, and holds the
    connection open until its stdin closes."""
    import ksmc

    s = ksmc.connect(NS["ns2"], NS_PORT, timeout=60)
    s.settimeout(120)
    s.sendall(os.urandom(NS_PLAN[0]))
    _recv_exactly(s, NS_PLAN[1])
    local, peer = ksmc.names(s)
    print(json.dumps({"local": local, "peer": peer, "ss": ksmc.ss()}), flush=True)
    sys.stdin.read()
    s.shutdown(socket.SHUT_WR)
    while s.recv(1 << 16):
        pass
    s.close()


def guest_client() -> None:
    import ksmc

    share = _share()
    peer = os.environ["LAB_PEER_IP"]
    _namespaces()
    ksmc.ueid_add(UEID)
    truth: dict = {"start": _counters(), "conns": [], **{f"start_{ns}": _counters(ns) for ns in NS}}
    rec = _start_recorder(share, "--netns", "all")
    ns_server = _in_ns("ns2", "guest-ns-server")
    assert ns_server.stdout.readline().strip() == "listening"
    ns_client = _in_ns("ns1", "guest-ns-client")
    truth["ns_conn"] = json.loads(ns_client.stdout.readline())
    socks = []
    plan = [(up, down, "drop-ueid" if i == len(PLAN) - 1 else "-") for i, (up, down) in enumerate(PLAN)] + [(*FALLBACK, "-")]
    for i, (up, down, note) in enumerate(plan):
        s = ksmc.connect(peer, PORT, timeout=90)
        s.settimeout(120)
        head = f"{up} {down} {note}\n".encode()
        s.sendall(head + os.urandom(up))
        _recv_exactly(s, down)
        local, remote = ksmc.names(s)
        truth["conns"].append({"i": i, "local": local, "peer": remote, "sent": up + len(head), "received": down, "fallback": i == len(PLAN)})
        socks.append(s)
    time.sleep(1.5)  # some polls with everything open
    truth["ss"] = ksmc.ss()
    r = subprocess.run([str(BIN / "smctop"), "--kernel", "--netns", "all", "--once", "--json"], capture_output=True, text=True, timeout=180)
    (share / "once-all.json").write_text(r.stdout)
    (share / "once-all.err").write_text(r.stderr + f"\nrc={r.returncode}\n")
    r = subprocess.run([str(BIN / "python"), "-m", "smckernel", "--once", "--json", "--netns", "all"], capture_output=True, text=True, timeout=180)
    (share / "once-all-module.json").write_text(r.stdout)
    ns_client.stdin.close()
    truth["ns_rc"] = [ns_client.wait(120), ns_server.wait(120)]
    # the recording ends here, with its counters: a tracepoint probe is the system's once (a
    # second process's is refused), so the screenshots' smctop must run after the recorder
    _stop_recorder(rec)
    truth["end"] = _counters()
    truth.update({f"end_{ns}": _counters(ns) for ns in NS})
    truth["streamed"] = 0
    if SHOTS:
        shots = _screenshots(share, socks[0])
        truth["streamed"], truth["screens"] = shots["streamed"], shots["screens"]
    for s in socks:
        s.shutdown(socket.SHUT_WR)
        while s.recv(1 << 16):
            pass
        s.close()
    ksmc.ueid_flush()
    (share / "truth.json").write_text(json.dumps(truth, indent=1))


if __name__ == "__main__":
    {"guest-client": guest_client, "guest-server": guest_server, "guest-ns-client": guest_ns_client, "guest-ns-server": guest_ns_server}[sys.argv[1]]()
    sys.exit(0)


# ---------------------------------------------------------------------------- the host side

from collections import Counter  # noqa: E402

import lab  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.lab
PY = ".venv/bin/python"


@pytest.fixture(scope="module")
def run() -> dict:
    a, b = lab.run_pair(f"{PY} tests/lab/test_kernel_record.py guest-client", f"{PY} tests/lab/test_kernel_record.py guest-server",
                        timeout=900 if SHOTS else 420, env={"SMCTOP_LAB_SCREENSHOTS": "1"} if SHOTS else None)  # fmt: skip
    for r in (a, b):
        r.check()
    out: dict = {"a": a, "b": b}
    for side, r in (("a", a), ("b", b)):
        out[side + "_truth"] = json.loads((r.share / "truth.json").read_text())
        s = subprocess.run([str(BIN / "smc-trace"), "summary", "--json", str(r.share / "rec.pcapng")], capture_output=True, text=True, timeout=300)
        assert s.returncode == 0, s.stderr
        out[side + "_summary"] = json.loads(s.stdout)
        out[side + "_record_err"] = (r.share / "record.err").read_text()
    if SHOTS:
        for name in SCREENS:
            (PROJECT / "docs" / "screenshots" / name).write_text((a.share / name).read_text())
    return out


def _delta(truth: dict, start: str = "start", end: str = "end") -> dict:
    """The kernel's counters, end minus start: SMC-R successes by role and version, fallback
    totals by role and by (role, reason), SMC-R payload bytes."""
    s0, s1 = truth[start]["stats"] or {}, truth[end]["stats"] or {}
    f0, f1 = truth[start]["fallbacks"] or {}, truth[end]["fallbacks"] or {}
    r0, r1 = (s0.get("smcr") or {}), (s1.get("smcr") or {})
    d = {k: (r1.get(k) or 0) - (r0.get(k) or 0) for k in ("clnt_v1_succ", "clnt_v2_succ", "srv_v1_succ", "srv_v2_succ", "tx_bytes", "rx_bytes")}
    d["fallback_client"] = (f1.get("client_total") or 0) - (f0.get("client_total") or 0)
    d["fallback_server"] = (f1.get("server_total") or 0) - (f0.get("server_total") or 0)
    reasons: Counter = Counter()
    for r in f1.get("reasons") or []:
        reasons[(r["role"], r["code"])] += r["count"] or 0
    for r in f0.get("reasons") or []:
        reasons[(r["role"], r["code"])] -= r["count"] or 0
    d["reasons"] = +reasons  # the reasons that moved
    return d


def _conns(summary: dict, host: str) -> list[dict]:
    return [c for c in summary["conns"] if c["host"] == host]


ROLE = {"client": "clnt", "server": "srv"}


HOSTS = {"a": ("a", "start", "end"), "a/ns1": ("a", "start_ns1", "end_ns1"), "a/ns2": ("a", "start_ns2", "end_ns2"), "b": ("b", "start", "end")}


@pytest.mark.parametrize("host", list(HOSTS))
def test_the_summary_agrees_with_the_kernels_counters(run, host) -> None:
    """Per host and namespace: the summary of the VM's recording against that namespace's
    counters, end minus start (the fields compared, and why the others cannot be, are in
    the module's docstring)."""
    side, start, end = HOSTS[host]
    summary, truth = run[side + "_summary"], run[side + "_truth"]
    d = _delta(truth, start, end)
    conns = _conns(summary, host)
    assert summary["dropped"]["events"] == 0 and summary["dropped"]["frames"] == 0, summary["dropped"]
    assert conns, f"no connection of {host} in the summary"
    # SMC-R connections by role and version
    smcr = Counter((c["role"], c["version"]) for c in conns if c["mode"] == "SMCR")
    kernel = Counter({(role, v): d[f"{ROLE[role]}_v{v}_succ"] for role in ROLE for v in (1, 2)})
    assert smcr == +kernel, (smcr, d)
    # fallbacks: per role, and per role and reason code
    tcp = [c for c in conns if c["mode"] == "TCP"]
    assert Counter(c["role"] for c in tcp) == +Counter({"client": d["fallback_client"], "server": d["fallback_server"]}), (tcp, d)
    assert Counter((c["role"], c["reason"]) for c in tcp) == d["reasons"], (tcp, d["reasons"])
    # SMC-R payload: what every send and receive call moved, against tx_bytes / rx_bytes
    assert sum(c["bytes_sent"] or 0 for c in conns if c["mode"] == "SMCR") == d["tx_bytes"], (conns, d)
    assert sum(c["bytes_received"] or 0 for c in conns if c["mode"] == "SMCR") == d["rx_bytes"], (conns, d)
    assert all(c["bytes_sent"] is None and c["bytes_received"] is None for c in tcp), tcp  # a fallback's bytes are TCP's


@pytest.mark.parametrize("side", ["a", "b"])
def test_the_summarys_fallbacks_are_the_kernels_by_reason(run, side) -> None:
    """The summary's fallbacks list (every host of the file) against every namespace's reason counts."""
    summary, truth = run[side + "_summary"], run[side + "_truth"]
    kernel: Counter = Counter()
    for s, start, end in HOSTS.values():
        if s == side:
            for (_, code), n in _delta(truth, start, end)["reasons"].items():
                kernel[code] += n
    assert {f["reason"]: f["count"] for f in summary["fallbacks"]} == dict(kernel), (summary["fallbacks"], kernel)


def test_the_counters_and_the_summary_are_what_the_applications_did(run) -> None:
    """The comparisons above are not of zeros: the counters moved as the applications did."""
    truth, d = run["a_truth"], _delta(run["a_truth"])
    smcr = [c for c in truth["conns"] if not c["fallback"]]
    assert d["clnt_v2_succ"] == len(PLAN) and _delta(run["b_truth"])["srv_v2_succ"] == len(PLAN), d
    assert d["tx_bytes"] == sum(c["sent"] for c in smcr) and d["rx_bytes"] == sum(c["received"] for c in smcr), (d, smcr)
    assert d["reasons"] == Counter({("client", PEERDECL): 1}) and _delta(run["b_truth"])["reasons"] == Counter({("server", NOSMCDEV): 1})
    server = _delta(run["b_truth"])  # every byte one side sent over SMC-R, the other read (b also what a streamed after its recording)
    assert (server["rx_bytes"], server["tx_bytes"]) == (d["tx_bytes"] + truth["streamed"], d["rx_bytes"]), (server, d, truth["streamed"])
    ns1, ns2 = _delta(truth, "start_ns1", "end_ns1"), _delta(truth, "start_ns2", "end_ns2")
    assert (ns1["fallback_client"], ns1["fallback_server"], ns2["fallback_client"], ns2["fallback_server"]) == (1, 0, 0, 1), (ns1, ns2)
    assert truth["ns_rc"] == [0, 0]


def test_record_all_reads_every_namespace_and_keeps_them_apart(run) -> None:
    summary, truth = run["a_summary"], run["a_truth"]
    assert "recording the kernel's SMC-R of a, a/ns1, a/ns2" in run["a_record_err"], run["a_record_err"]
    hosts: dict = {}
    for c in summary["conns"]:
        hosts.setdefault(c["host"], []).append((c["local"], c["peer"]))
    ns = truth["ns_conn"]
    assert hosts["a/ns1"] == [(ns["local"], ns["peer"])] and hosts["a/ns2"] == [(ns["peer"], ns["local"])], hosts
    assert all(not local.startswith("10.3.") for local, _ in hosts["a"]), hosts["a"]  # ns1's and ns2's stay theirs


@pytest.mark.parametrize("name", ["once-all.json", "once-all-module.json"])
def test_once_json_of_all_namespaces_names_each_entry(run, name) -> None:
    share, truth = run["a"].share, run["a_truth"]
    doc = json.loads((share / name).read_text())
    assert doc["hosts"] == ["a", "a/ns1", "a/ns2"] and doc["namespaces"] == {"a": None, "a/ns1": "ns1", "a/ns2": "ns2"}, doc.get("hosts")

    def mine(host: str) -> list:
        return sorted((c["local"], c["peer"], c["mode"]) for c in doc["connections"] if c["host"] == host and c["state"] != "LISTEN")

    assert mine("a") == sorted((r["local"], r["peer"], r["mode"]) for r in truth["ss"] if r["state"] != 10)
    ns = truth["ns_conn"]
    assert mine("a/ns1") == [(ns["local"], ns["peer"], "TCP")] and mine("a/ns2") == [(ns["peer"], ns["local"], "TCP")], doc["connections"]
    assert all(c["netns"] == doc["namespaces"][c["host"]] for c in doc["connections"])
    assert doc["link_groups"] and {(g["host"], g["netns"]) for g in doc["link_groups"]} == {("a", None)}
    assert doc["stats"]["a"]["counters"]["smcr"]["clnt_v2_succ"] >= len(PLAN)
    assert doc["stats"]["a/ns1"]["fallback"]["client"] >= 1 and doc["stats"]["a/ns2"]["fallback"]["server"] >= 1


def test_the_screenshots_show_the_kernels_connections(run) -> None:
    """The panes this run took (SMCTOP_LAB_SCREENSHOTS=1), else the ones in docs/screenshots:
    smctop --kernel on VM a with its two SMC-R connections and the fallback, in the size named."""
    where = run["a"].share if SHOTS else PROJECT / "docs" / "screenshots"
    for name, (w, h) in SCREENS.items():
        text = (where / name).read_text()
        lines = text.splitlines()
        assert len(lines) <= h and max(map(len, lines)) <= w, name
        assert "kernel a" in text and text.count("SMCR") >= len(PLAN) + 1 and "TCP" in text, text
