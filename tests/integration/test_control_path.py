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
from support.stacks import addrs

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
    addr = addrs()[0]
    first = _server(path, addr, 120)
    try:
        hello = _wait_serving(first, path)
        assert hello["host"] == f"h-{addr}"
        inode = os.stat(path).st_ctime_ns
        second = _server(path, addrs()[0], 120)
        rc, _, err = _stop_when_exited(second)
        assert rc != 0, err
        assert str(path) in err and "in use" in err, err
        assert f"pid {first.pid}" in err and f"'h-{addr}'" in err, err  # the live owner, named
        assert "Traceback" not in err, err
        # the first still owns and serves its path
        assert os.stat(path).st_ctime_ns == inode
        assert _hello(path)["host"] == f"h-{addr}"
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
    addr = addrs()[0]
    proc = _server(path, addr, 120)
    try:
        assert _wait_serving(proc, path)["host"] == f"h-{addr}"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    finally:
        rc, _, err = _stop(proc)
    assert rc == 0 and "Traceback" not in err, err
    assert not path.exists()


def test_a_stack_leaves_a_path_that_is_no_longer_its_own(sock_dir) -> None:
    path = sock_dir / "c.sock"
    proc = _server(path, addrs()[0], 120)
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
    rc, _, err = _stop_when_exited(_server(path, addrs()[0], 120))
    assert rc != 0 and str(path) in err and "not a socket" in err and "Traceback" not in err, err
    assert path.read_text() == "precious"


# ---------------------------------------------------------------- another user at the same path

NOBODY = 65534


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run smc-traffic's main in a forked child as uid/gid 65534; its exit status and stderr.

    Forked, not a new interpreter: the venv's Python lives under /root, which nobody may not
    read, and the child needs nothing it has not imported already."""
    import stack.traffic.cli as cli

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 70
        try:
            os.close(r)
            sys.stderr = os.fdopen(w, "w")  # (pytest's capture is not file descriptor 2)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = cli.main(argv)
        except BaseException as e:  # noqa: BLE001 (the parent reads what happened)
            print(f"child: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 70)
    os.close(w)
    with os.fdopen(r, "r") as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.fixture
def shared_dir(request):
    """A directory every user may write to: world-writable without the sticky bit (the
    take-over case) or with it (like /tmp)."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root: a second user's stack is run with setuid")
    d = Path(tempfile.mkdtemp(prefix="smcsh"))
    os.chmod(d, request.param)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("shared_dir", [0o777, 0o1777], ids=["world-writable", "sticky"], indirect=True)
def test_another_users_stack_cannot_take_a_live_control_socket(shared_dir) -> None:
    path = shared_dir / "ctl.sock"
    root_addr, nobody_addr = addrs()
    first = _server(path, root_addr, 120)
    try:
        _wait_serving(first, path)
        before = os.stat(path)
        rc, err = _as_nobody(["server", "--listen", f"{nobody_addr}:5600", "--no-smc", "--control", str(path), "--duration", "30"])
        assert rc == 2, err
        assert f"control socket {path} is in use by another user: it belongs to uid 0" in err, err
        assert "uid 65534" in err and "Traceback" not in err and "Operation not permitted" not in err, err
        # the file is still root's own socket, and root's stack still answers on it
        after = os.stat(path)
        assert (after.st_uid, after.st_ino, after.st_ctime_ns) == (0, before.st_ino, before.st_ctime_ns)
        assert _hello(path)["host"] == f"h-{root_addr}"
    finally:
        rc, _, err = _stop(first)
    assert rc == 0, err


def test_another_users_stale_socket_in_a_sticky_directory_names_its_owner(sock_dir) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a second user's stack is run with setuid")
    os.chmod(sock_dir, 0o1777)
    path = sock_dir / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # root's stack died; its socket open to all, nobody listening
    stale.close()
    os.chmod(path, 0o777)
    rc, err = _as_nobody(["server", "--listen", f"{addrs()[0]}:5600", "--no-smc", "--control", str(path), "--duration", "30"])
    assert rc == 2, err
    assert f"control socket {path} is a stale socket of uid 0, which this user (uid 65534) may not remove" in err, err
    assert "Traceback" not in err, err
    assert os.lstat(path).st_uid == 0


# ---------------------------------------------------------------- command errors that name the real problem


def test_fail_link_and_decline_errors_say_what_is_wrong(sock_dir) -> None:
    import asyncio

    from support.stacks import echo_exchanges, run, two_stacks

    from stack.runtime.control import ControlClient, ControlServer

    path = str(sock_dir / "c.sock")

    async def ask(client: ControlClient, msgs, cmd: dict) -> dict:
        client.writer.write(json.dumps(cmd).encode() + b"\n")
        await client.writer.drain()
        while True:
            m = await asyncio.wait_for(msgs.__anext__(), 10)
            if m["type"] in ("reply", "error"):
                return m

    async def main():
        async with two_stacks() as (a, b, ca, sa):
            await echo_exchanges(a, b, ca, sa, n=1)  # one link group
            ctl = ControlServer(a, path)
            await ctl.start()
            try:
                client = await ControlClient.connect(path)
                msgs = client.messages()
                (lgr,) = [g["id"] for g in a.snapshot()["lgrs"]]
                links = [str(x["id"]) for x in a.snapshot()["lgrs"][0]["links"]]
                answers = [await ask(client, msgs, {"cmd": "fail_link", "lgr": "zz", "link": 999}),
                           await ask(client, msgs, {"cmd": "fail_link", "lgr": lgr, "link": 999}),
                           await ask(client, msgs, {"cmd": "fail_link", "lgr": lgr, "link": 77}),
                           await ask(client, msgs, {"cmd": "fail_link", "lgr": "x", "link": True}),
                           await ask(client, msgs, {"cmd": "decline", "reason": -1}),
                           await ask(client, msgs, {"cmd": "decline", "reason": "-1"})]  # fmt: skip
                await client.close()
                return lgr, links, answers
            finally:
                await ctl.close()

    lgr, links, answers = run(main())
    assert all(m["type"] == "error" for m in answers), answers
    errors = [m["error"] for m in answers]
    assert errors[0] == f"no link group 'zz'; link groups: {lgr}"
    assert errors[1] == f"no link 999 (link ids are 0 to 255) in link group {lgr!r}; its links: {', '.join(links)}"
    assert errors[2] == f"no link 77 in link group {lgr!r}; its links: {', '.join(links)}"
    assert errors[3] == "fail_link needs 'lgr' (string) and 'link' (integer)"  # a wrong type is still named as such
    assert errors[4] == errors[5] == "reason -1 is not a decline code (1 to 0xffffffff)"
