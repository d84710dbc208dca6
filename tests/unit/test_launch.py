"""The commands' start (stack.launch, what the console scripts call): a Ctrl-C while a command
is still importing, or in a command that does not stop on it by itself, is one line and the
shell's exit code, never a KeyboardInterrupt traceback. Each test runs the real entry point in
its own interpreter and delivers a real SIGINT at a chosen point."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SESSION = ROOT / "tests" / "golden" / "session.jsonl"

# the point where the signal comes: just before ``module`` is imported (a hook on the import system)
AT_IMPORT = """
import os, signal, sys
class Hook:
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, Hook())
"""


def _run(code: str, argv: list[str], preexec=None) -> subprocess.CompletedProcess:
    script = textwrap.dedent(code) + f"\nsys.argv = {argv!r}\nimport stack.launch\nsys.exit(getattr(stack.launch, {argv[0].replace('-', '_')!r})())\n"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=preexec)


@pytest.mark.parametrize(
    "argv, module",
    [
        (["smc-traffic", "client", "--bytes", "1M"], "stack.traffic.cli"),
        (["smc-traffic", "client", "--bytes", "1M"], "stack.runtime"),  # deep in the command's own imports
        (["smc-trace", "summary", str(SESSION)], "dissectors.cli"),
        (["smctop", "--once"], "smctop.app"),
    ],
)
def test_a_ctrl_c_while_a_command_imports_is_one_line(argv: list[str], module: str) -> None:
    res = _run(AT_IMPORT.format(module=module), argv)
    assert (res.returncode, res.stdout, res.stderr) == (130, "", f"{argv[0]}: SIGINT while starting; nothing ran\n")


def test_a_ctrl_c_in_the_middle_of_a_decode_is_one_line() -> None:
    # the signal after the 20th event read: smc-trace decode does not stop on Ctrl-C by itself
    code = """
        import os, signal, sys
        import dissectors.capture as capture
        real = capture.read_events
        def read_events(*a, **k):
            for n, e in enumerate(real(*a, **k)):
                if n == 20:
                    os.kill(os.getpid(), signal.SIGINT)
                yield e
        capture.read_events = read_events
    """
    res = _run(code, ["smc-trace", "decode", "--json", str(SESSION)])
    assert res.returncode == 130, res.stderr
    assert res.stderr == "smc-trace: interrupted\n"
    assert all(line.startswith("{") and line.endswith("}") for line in res.stdout.splitlines()), res.stdout  # whole lines, if any


def test_a_ctrl_c_the_shell_ignores_stays_ignored() -> None:
    # a background job of a non-interactive shell starts with SIGINT ignored: the launcher
    # must not make it stop on one
    res = _run(AT_IMPORT.format(module="dissectors.cli"), ["smc-trace", "summary", str(SESSION)],
               preexec=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "connections" in res.stdout


def test_the_console_scripts_start_at_the_launcher() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]")[1].split("\n\n")[0]
    assert {line.split(" = ")[0]: line.split(" = ")[1].strip('"') for line in scripts.strip().splitlines()} == {
        "smc-traffic": "stack.launch:smc_traffic",
        "smc-trace": "stack.launch:smc_trace",
        "smctop": "stack.launch:smctop",
    }


def test_the_launcher_imports_nothing_heavy() -> None:
    # what a command loads before the handlers are in place: the package and the launcher alone
    code = "import sys; import stack.launch; print(sorted(m for m in sys.modules if m.split('.')[0] in ('stack', 'smctop', 'dissectors')))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "['stack', 'stack.launch']", res.stdout + res.stderr
