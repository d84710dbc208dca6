"""Two kernel sources at once on one VM over a bulk SMC-R transfer (issue 18).

One boot of two VMs. VM a makes two more network namespaces and starts a recorder of all
three (the first kernel source: ``python -m smckernel --record --netns all``, which also
logs every trace_pipe line, or with TWO_SOURCES_FIRST=smc-trace ``smc-trace record --kernel
--netns all``), opens one SMC-R connection to VM b's AF_SMC server and streams 64 KiB writes
into it (10 ms apart); 4 s in it starts ``smctop --kernel`` in tmux (the second source: its
own trace instance and probe group; its probes on tracepoints are refused, the kernel takes
those once per system), quits it with q after 60 s of the stream, and ends the stream at
75 s (both later when smctop is slow to show: on this one-CPU VM it took 100-250 s). Each
side reads the kernel's own counters (SMC_NETLINK_GET_STATS) before and after, and VM a
what tracefs holds at each step (``tracefs-*.txt`` in its share: dynamic_events, the
instances, each one's enabled events and per-CPU buffer statistics).

The host holds the first recording to the truth: exactly one connection id for the one
socket, its bytes sent equal to what the application sent and to the kernel's tx_bytes
delta, nothing dropped; and tracefs after the second stopped holds the first's instances
and groups only, its probes still enabled. Before the fix the recorder's trace reader,
starved by its pollers, fell 135 s behind and the socket became four connection ids with
226 of 390 MB (docs/kernel-source.md, "Two kernel sources at once").

``python tests/lab/test_kernel_two_sources.py guest-client|guest-server`` is the guest side.
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

PORT = 5005
UEID = "SMCTOP-LAB"
BIN = PROJECT / ".venv" / "bin"
TRACEFS = "/sys/kernel/tracing"
# seconds from the stream's start: the second source starts, is stopped; the stream ends
SECOND_START, SECOND_STOP, STREAM_END = 4.0, 60.0, 75.0
BLOCK = 1 << 16
# the lab run's variant (for finding the cause): which program the second source is (module:
# python -m smckernel; smctop: smctop --kernel in tmux, quit with q then its server killed),
# whether the recorder is python -m smckernel with its trace_pipe lines logged, namespaces
SECOND = os.environ.get("TWO_SOURCES_SECOND", "smctop")
FIRST = os.environ.get("TWO_SOURCES_FIRST", "module")
NETNS = os.environ.get("TWO_SOURCES_NETNS", "1") == "1"
PAUSE = float(os.environ.get("TWO_SOURCES_PAUSE", "0.01"))  # seconds between blocks
SECOND_START = float(os.environ.get("TWO_SOURCES_START", SECOND_START))
SECOND_STOP = float(os.environ.get("TWO_SOURCES_STOP", SECOND_STOP))
STREAM_END = float(os.environ.get("TWO_SOURCES_END", STREAM_END))


# ---------------------------------------------------------------------------- the guest side


def _share() -> Path:
    return Path(os.environ["LAB_SHARE"])


def _counters() -> dict:
    from smckernel.source import snapshot_once

    snap = snapshot_once()
    return {"stats": snap.stats, "fallbacks": snap.fallbacks}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return f"<{e.strerror}>"


def tracefs_state() -> str:
    """What tracefs holds now: the dynamic events, the instances, each one's enabled events
    and per-CPU buffer statistics (overruns, dropped events)."""
    out = ["## dynamic_events", _read(f"{TRACEFS}/dynamic_events")]
    inst = f"{TRACEFS}/instances"
    for name in sorted(os.listdir(inst)) if os.path.isdir(inst) else []:
        out.append(f"## instance {name}: set_event")
        out.append(_read(f"{inst}/{name}/set_event"))
        for cpu in sorted(os.listdir(f"{inst}/{name}/per_cpu")):
            out.append(f"## instance {name} {cpu} stats")
            out.append(_read(f"{inst}/{name}/per_cpu/{cpu}/stats"))
    out.append("## error_log")
    out.append(_read(f"{TRACEFS}/error_log")[-3000:])
    return "\n".join(out)


def _wait_for(path: Path, text: str, p: subprocess.Popen, what: str, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while text not in (path.read_text() if path.exists() else ""):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (rc {p.poll()}): {path.read_text() if path.exists() else ''}")
        time.sleep(0.2)


def _stop(p: subprocess.Popen, what: str) -> None:
    p.send_signal(signal.SIGINT)
    rc = p.wait(300)  # a recorder drains the trace buffer first (at most a minute), slow on a loaded one-CPU VM
    if rc != 0:
        raise RuntimeError(f"{what} exited {rc}")


def _smctop_start(share: Path) -> list[str]:
    """smctop --kernel in tmux (as the screenshots of test_kernel_record.py run it), once its pane shows the connection."""
    if not os.path.ismount("/dev/pts"):  # the lab's init mounts no devpts: tmux needs a pseudo-terminal
        os.makedirs("/dev/pts", exist_ok=True)
        subprocess.run(["mount", "-t", "devpts", "-o", "ptmxmode=0666", "devpts", "/dev/pts"], check=True)
    tmux = ["tmux", "-L", f"smctop-two-{os.getpid()}", "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "k", "-x", "200", "-y", "50", f"cd {PROJECT} && {BIN / 'smctop'} --kernel; sleep 600"],
                   check=True, env={**os.environ, "TERM": "xterm-256color", "SHELL": "/bin/sh"})  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(2.0)
        text = subprocess.run([*tmux, "capture-pane", "-p", "-t", "k"], capture_output=True, text=True).stdout
        if "SMCR" in text:
            break
    (share / "smctop-pane.txt").write_text(text)
    return tmux


def _smctop_stop(share: Path, tmux: list[str]) -> dict:
    """q, then wait until smctop has closed its source (no smctop process is left)."""
    t0 = time.monotonic()
    subprocess.run([*tmux, "send-keys", "-t", "k", "q"])
    deadline = t0 + 150
    seen = []
    while time.monotonic() < deadline:
        time.sleep(1.0)
        cmd = subprocess.run([*tmux, "list-panes", "-t", "k", "-F", "#{pane_current_command}"], capture_output=True, text=True).stdout.strip()
        if cmd not in seen:
            seen.append(cmd)
        if subprocess.run(["pgrep", "-f", "^[^ ]*python[^ ]* [^ ]*bin/smctop --kernel$"], capture_output=True).returncode != 0:
            break
    quit_s = time.monotonic() - t0
    subprocess.run([*tmux, "kill-server"])
    return {"smctop_quit_s": round(quit_s, 1), "pane_commands": seen}


def guest_server() -> None:
    import ksmc

    share = _share()
    ksmc.ueid_add(UEID)
    truth: dict = {"start": _counters()}
    lst = ksmc.listen("0.0.0.0", PORT)
    s = ksmc.accept(lst, timeout=240)
    s.settimeout(300)
    n = 0
    while chunk := s.recv(1 << 16):
        n += len(chunk)
    s.sendall(f"{n}\n".encode())
    s.close()
    lst.close()
    truth["received"] = n
    truth["end"] = _counters()
    ksmc.ueid_flush()
    (share / "truth.json").write_text(json.dumps(truth, indent=1))


def guest_client() -> None:
    import ksmc

    share = _share()
    peer = os.environ["LAB_PEER_IP"]
    ksmc.ueid_add(UEID)
    truth: dict = {"start": _counters()}
    (share / "tracefs-0-before.txt").write_text(tracefs_state())
    if NETNS:
        for ns in ("ns1", "ns2"):
            subprocess.run(["ip", "netns", "add", ns], check=True)
    err1 = share / "record.err"
    extra = ["--netns", "all"] if NETNS else []
    if FIRST == "module":
        rec = subprocess.Popen([str(BIN / "python"), "-m", "smckernel", "--rate", "2", "--record", str(share / "rec.pcapng"), "--text",
                                "--trace-log", str(share / "trace1.log"), *extra], stdout=open(share / "record.out", "w"),
                               stderr=open(err1, "w"), cwd=PROJECT)  # fmt: skip
        _wait_for(share / "record.out", " stats ", rec, "python -m smckernel")
    else:
        rec = subprocess.Popen([str(BIN / "smc-trace"), "record", "--kernel", "-w", str(share / "rec.pcapng"), "--rate", "2", *extra],
                               stdout=open(share / "record.out", "w"), stderr=open(err1, "w"), cwd=PROJECT)  # fmt: skip
        _wait_for(err1, "recording the kernel's SMC-R", rec, "smc-trace record")
    (share / "tracefs-1-recorder.txt").write_text(tracefs_state())
    s = ksmc.connect(peer, PORT, timeout=90)
    s.settimeout(300)
    truth["local"], truth["peer"] = ksmc.names(s)
    sent = [0]
    stop = threading.Event()

    def pump() -> None:
        block = os.urandom(BLOCK)
        while not stop.is_set():
            s.sendall(block)
            sent[0] += len(block)
            if PAUSE:
                time.sleep(PAUSE)

    t0 = time.monotonic()
    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    time.sleep(SECOND_START)
    if SECOND == "smctop":
        tmux = _smctop_start(share)
    else:
        err2 = share / "second.err"
        second = subprocess.Popen([str(BIN / "python"), "-m", "smckernel", "--rate", "2", "--text"], stdout=open(share / "second.out", "w"),
                                  stderr=open(err2, "w"), cwd=PROJECT)  # fmt: skip
        _wait_for(share / "second.out", " stats ", second, "python -m smckernel")
    truth["recorder_pid"] = rec.pid
    truth["second_started"] = time.monotonic() - t0
    (share / "tracefs-2-both.txt").write_text(tracefs_state())
    time.sleep(max(0.0, SECOND_STOP - (time.monotonic() - t0)))
    if SECOND == "smctop":
        truth.update(_smctop_stop(share, tmux))
    else:
        _stop(second, "python -m smckernel")
    truth["second_stopped"] = time.monotonic() - t0
    (share / "tracefs-3-after-second.txt").write_text(tracefs_state())
    time.sleep(max(0.0, STREAM_END - (time.monotonic() - t0)))
    stop.set()
    pumper.join(120)
    truth["sent"] = sent[0]
    truth["streamed_s"] = time.monotonic() - t0
    s.shutdown(socket.SHUT_WR)
    truth["peer_received"] = int(ksmc.recv_line(s, "the server's count"))
    s.close()
    time.sleep(2.0)  # a few polls with the connection closed
    (share / "tracefs-4-end.txt").write_text(tracefs_state())
    _stop(rec, "smc-trace record")
    truth["end"] = _counters()
    (share / "tracefs-5-after.txt").write_text(tracefs_state())
    ksmc.ueid_flush()
    (share / "truth.json").write_text(json.dumps(truth, indent=1))


if __name__ == "__main__":
    {"guest-client": guest_client, "guest-server": guest_server}[sys.argv[1]]()
    sys.exit(0)


# ---------------------------------------------------------------------------- the host side

import lab  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.lab
PY = ".venv/bin/python"


@pytest.fixture(scope="module")
def run() -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith("TWO_SOURCES_")}
    a, b = lab.run_pair(f"{PY} tests/lab/test_kernel_two_sources.py guest-client", f"{PY} tests/lab/test_kernel_two_sources.py guest-server",
                        timeout=900, env=env)  # fmt: skip
    for r in (a, b):
        r.check()
    out: dict = {"a": a, "b": b, "truth": json.loads((a.share / "truth.json").read_text()),
                 "b_truth": json.loads((b.share / "truth.json").read_text())}  # fmt: skip
    s = subprocess.run([str(BIN / "smc-trace"), "summary", "--json", str(a.share / "rec.pcapng")], capture_output=True, text=True, timeout=300)
    assert s.returncode == 0, s.stderr
    out["summary"] = json.loads(s.stdout)
    return out


def _smcr_delta(truth: dict, key: str) -> int:
    return ((truth["end"]["stats"] or {}).get("smcr") or {}).get(key, 0) - ((truth["start"]["stats"] or {}).get("smcr") or {}).get(key, 0)


def test_the_second_source_ran_while_the_stream_did(run) -> None:
    truth = run["truth"]
    assert truth["second_started"] < truth["second_stopped"] < truth["streamed_s"], truth
    assert truth["peer_received"] == truth["sent"] + 0 and truth["sent"] > 0, truth


def test_one_socket_is_one_connection(run) -> None:
    truth, summary = run["truth"], run["summary"]
    mine = [c for c in summary["conns"] if (c["local"], c["peer"]) == (truth["local"], truth["peer"])]
    assert len(mine) == 1, [(c["conn"], c["local"], c["peer"], c["mode"]) for c in summary["conns"]]


def test_the_recordings_bytes_are_the_kernels(run) -> None:
    truth, summary = run["truth"], run["summary"]
    assert summary["dropped"]["events"] == 0, summary["dropped"]
    smcr = [c for c in summary["conns"] if c["mode"] == "SMCR"]
    assert sum(c["bytes_sent"] or 0 for c in smcr) == _smcr_delta(truth, "tx_bytes") == truth["sent"], (smcr, truth)


def test_the_second_source_left_the_first_alone_and_nothing_behind(run) -> None:
    """While both ran each had its instance and group; after the second stopped only the
    first's are there, its probes all still defined and enabled."""
    share, pid = run["a"].share, run["truth"]["recorder_pid"]
    both, after = (share / "tracefs-2-both.txt").read_text(), (share / "tracefs-3-after-second.txt").read_text()

    def instances(text: str) -> set[str]:
        return {line.split()[2].rstrip(":") for line in text.splitlines() if line.startswith("## instance") and line.endswith("set_event")}

    def groups(text: str) -> set[str]:
        return {line.split()[0].split(":")[1].split("/")[0] for line in text.splitlines() if line[:2] in ("f:", "t:")}

    mine = {i for i in instances(both) if i == f"smckernel-{pid}" or i.startswith(f"smckernel-{pid}_")}
    assert mine and len(instances(both) - mine) == 1, instances(both)  # the second's own instance
    assert len(groups(both)) == len(mine) + 1, groups(both)
    assert instances(after) == mine and groups(after) == {f"smck{pid}" + i[len(f"smckernel-{pid}") :] for i in mine}, (instances(after), groups(after))
    first = [line for line in after.split(f"## instance smckernel-{pid}: set_event")[1].split("##")[0].splitlines() if line.strip()]
    assert {x.split(":")[1] for x in first if x.startswith(f"smck{pid}:")} >= {"sendmsg", "recvmsg", "cdc_rx", "fallback"}, first
