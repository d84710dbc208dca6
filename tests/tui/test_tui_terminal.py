"""smctop in a real terminal: tmux runs the console script on the embedded demo; a link is
failed from the keyboard; the captured screen shows the failover and the connections
carrying on. tmux comes from scripts/setup.sh (Debian package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (scripts/setup.sh installs it: apt-get install tmux)")

UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


class Terminal:
    def __init__(self, tmp: Path) -> None:
        self.sock = f"smctop-test-{os.getpid()}"  # a private tmux server: nobody else's sessions
        self.tmp = tmp

    def tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.sock, *args], capture_output=True, text=True, timeout=20).stdout

    def start(self, command: str) -> None:
        subprocess.run([TMUX, "-L", self.sock, "new-session", "-d", "-s", "smctop", "-x", "200", "-y", "50", command],
                       check=True, timeout=20, env={**os.environ, "TERM": "xterm-256color"})  # fmt: skip

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "smctop")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "smctop", *keys)

    def wait_for(self, check, timeout: float = 40.0, what: str = "") -> str:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            text = self.screen()
            if check(text):
                return text
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{text}")

    def dump_stacks(self) -> None:
        shell = self.tmux("list-panes", "-t", "smctop", "-F", "#{pane_pid}").strip()
        if shell:
            subprocess.run(["pkill", "-USR1", "-P", shell], capture_output=True, timeout=10)
            time.sleep(1)
            subprocess.run(["pkill", "-USR2", "-P", shell], capture_output=True, timeout=10)  # the asyncio tasks too
            time.sleep(2)

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.sock, "kill-server"], capture_output=True, timeout=20)


def smctop_command(tmp: Path) -> str:
    script = Path(sys.executable).parent / "smctop"
    exe = str(script) if script.exists() else f"{sys.executable} -m smctop.app"
    return f"cd {tmp} && {exe} --record-dir {tmp}; echo smctop exited $?; sleep 120"


def conn_rows(screen: str) -> list[str]:
    return [line for line in screen.splitlines() if re.match(r"^(alpha|beta) +ACTIVE +SMCR ", line)]


def sent_bytes(screen: str) -> float:
    """The sum of the Sent column of the SMC-R connections on screen."""
    total = 0.0
    for line in conn_rows(screen):
        m = re.search(r"%\s+\S+\s+([\d.]+) (\w+)\s+[\d.]+ \w+", line)  # fill, RMB, Sent, Recv
        if m:
            total += float(m.group(1)) * UNITS.get(m.group(2), 1)
    return total


def test_demo_in_tmux_fail_a_link_from_the_keyboard(tmp_path):
    term = Terminal(tmp_path)
    try:
        term.start(smctop_command(tmp_path))
        # the demo comes up: SMC-R connections between alpha and beta, gamma's fallbacks
        first = term.wait_for(lambda s: len(conn_rows(s)) >= 4 and "fallback " in s, what="the demo's SMC-R connections")
        assert "hosts alpha beta gamma" in first and "traffic on" in first
        term.keys("1")
        links = term.wait_for(lambda s: s.count("LINK_ACTIVE") >= 4 and " SYM " in s, what="two SYM link groups with their links")
        assert "Crit" in links and "failovers (connections moved)" in links and "none yet" in links
        term.keys("f")  # fail a link: beta's first port goes down
        after = term.wait_for(lambda s: "connections moved in" in s and re.search(r"\(port down on 127\.30\.\d+\.2\)", s),
                              what="the failover in the links view")  # fmt: skip
        assert re.search(r"beta: port of 127\.30\.\d+\.2 pulled", after)  # the demo's addresses are per run (127.30.x)
        assert re.search(r"beta +\S+ +SERVER +ASYM[LP]", after) or re.search(r"beta +\S+ +SERVER +SINGLE", after), after
        assert "LINK_ACTIVE" in after
        # the connections carry on: still ACTIVE over SMC-R, and bytes keep moving
        term.keys("2")
        one = term.wait_for(lambda s: len(conn_rows(s)) >= 4 and "Sent" in s, what="the connections view")
        time.sleep(3)
        two = term.wait_for(lambda s: len(conn_rows(s)) >= 4 and sent_bytes(s) > sent_bytes(one), what="bytes still moving after the failover")
        # each failover once though both ends moved their connections (was 2 to 4), and not "failovers 20"
        assert re.search(r"failovers [12]\b", two), two
        term.keys("r")  # restore the port
        term.keys("1")
        term.wait_for(lambda s: re.search(r"beta: port of 127\.30\.\d+\.2 back up", s), what="the port restored")
        term.keys("q")
        try:
            done = term.wait_for(lambda s: "smctop exited" in s, timeout=30, what="smctop to quit")
        except AssertionError:
            term.dump_stacks()  # smctop prints where every thread is (faulthandler on SIGUSR1)
            raise AssertionError("smctop did not exit within 30 s of q:\n" + term.tmux("capture-pane", "-p", "-S", "-200", "-t", "smctop")) from None
        assert "smctop exited 0" in done, done
    finally:
        term.close()
