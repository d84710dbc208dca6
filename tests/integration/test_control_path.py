"""Issue #15 defect 6: two stacks given one ``--control`` path, as real processes.

The second must refuse (exit non-zero, naming the path and the live owner) and leave the
first reachable; a stale socket file (a stack that died) is taken over; a stack removes the
path at exit only while it is still its own socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _server(path: Path, addr: str, duration: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stack.traffic.cli", "server", "--listen", f"{addr}:5600", "--no-smc",
           "--control", str(path), "--duration", str(duration), "--host-name", f"h-{addr}"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _hello(path: Path) -> dict:
    """Connect to the control socket and return its hello line (raises when nobody serves it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(str(path))
        return json.loads(s.makefile("rb").readline())
    finally:
        s.close()


def _wait_serving(proc: subprocess.Popen, path: Path) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            return _hello(path)
        except (OSError, ValueError):
            time.sleep(0.1)
    raise AssertionError(f"{path} never served")


def _stop(proc: subprocess.Popen) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.terminate()
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.fixture
def sock_dir():
    # a short path: unix socket paths are limited to 107 bytes and pytest's tmp_path can be longer
    import tempfile

    with tempfile.TemporaryDirectory(prefix="smcctl") as d:
        yield Path(d)


def test_a_second_process_refuses_a_live_stacks_control_path_and_the_first_stays_reachable(sock_dir) -> None:
    path = sock_dir / "c.sock"
    first = _server(path, "127.1.9.7", 120)
    try:
        hello = _wait_serving(first, path)
        assert hello["host"] == "h-127.1.9.7"
        inode = os.stat(path).st_ctime_ns
        second = _server(path, "127.1.9.8", 120)
        rc, _, err = _stop_when_exited(second)
        assert rc != 0, err
        assert str(path) in err and "in use" in err, err
        assert f"pid {first.pid}" in err and "'h-127.1.9.7'" in err, err  # the live owner, named
        assert "Traceback" not in err, err
        # the first still owns and serves its path
        assert os.stat(path).st_ctime_ns == inode
        assert _hello(path)["host"] == "h-127.1.9.7"
        assert first.poll() is None
    finally:
        rc, _, err = _stop(first)
    assert rc == 0, err
    assert not path.exists()  # its own socket, removed at exit


def _stop_when_exited(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the second stack ran on: {err}") from None
    return proc.returncode, out, err


def test_a_stale_socket_file_is_taken_over(sock_dir) -> None:
    path = sock_dir / "c.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a socket file nobody listens on: a stack that died
    stale.close()
    proc = _server(path, "127.1.9.9", 120)
    try:
        assert _wait_serving(proc, path)["host"] == "h-127.1.9.9"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    finally:
        rc, _, err = _stop(proc)
    assert rc == 0 and "Traceback" not in err, err
    assert not path.exists()


def test_a_stack_leaves_a_path_that_is_no_longer_its_own(sock_dir) -> None:
    path = sock_dir / "c.sock"
    proc = _server(path, "127.1.9.10", 120)
    try:
        _wait_serving(proc, path)
        os.unlink(path)  # someone removed it; another server now lives at the path
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(path))
        other.listen()
        theirs = (os.stat(path).st_ino, os.stat(path).st_ctime_ns)  # (file systems reuse a removed file's inode)
        rc, _, err = _stop(proc)
        assert rc == 0, err
        assert path.exists() and (os.stat(path).st_ino, os.stat(path).st_ctime_ns) == theirs  # not deleted by the exiting stack
        other.close()
    finally:
        if proc.poll() is None:
            _stop(proc)


def test_a_path_that_is_not_a_socket_is_refused_and_kept(sock_dir) -> None:
    path = sock_dir / "c.sock"
    path.write_text("precious")
    rc, _, err = _stop_when_exited(_server(path, "127.1.9.11", 120))
    assert rc != 0 and str(path) in err and "not a socket" in err and "Traceback" not in err, err
    assert path.read_text() == "precious"
