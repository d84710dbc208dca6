"""Where the commands start: the console scripts of pyproject.toml (smc-traffic, smc-trace,
smctop) call these, not the commands' modules.

Importing a command takes 0.2-0.5 s, and a Ctrl-C in that time was a KeyboardInterrupt
traceback; so was a Ctrl-C in a command that does not stop on it by itself (`smc-trace
decode` of a large file, piped to a pager). Here the signal handlers come first, before
anything heavy is imported, and either case ends in one line on stderr and the shell's exit
code for the signal (130 for SIGINT, 143 for SIGTERM while starting). A command that handles
its signals itself (a run of smc-traffic, a recording) does so as before: its handlers
replace these once it runs.

This module imports nothing of the project statically: the commands are named by their
module, so that this file stays the first and lightest thing a command loads.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


class _Stopped(BaseException):
    """A signal while the command was still being imported (no ``except Exception`` takes it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _while_starting(signum: int, frame) -> None:
    raise _Stopped(signum)


def _quiet_stdout() -> None:
    """stdout may be a pipe its reader closed: what is left in it goes nowhere, silently."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass


def run(prog: str, target: str) -> int:
    """Import ``target`` ("module:function") and run it, with SIGINT and SIGTERM as one line."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not signal.SIG_IGN:  # a background job of a shell ignores SIGINT: it still does
            previous[sig] = handler if handler is not None else signal.SIG_DFL
            signal.signal(sig, _while_starting)
    try:
        module, _, name = target.partition(":")
        main = getattr(importlib.import_module(module), name)
        for sig, handler in previous.items():  # the command's own signal handling from here on
            signal.signal(sig, handler)
    except (_Stopped, KeyboardInterrupt) as s:
        signum = s.signum if isinstance(s, _Stopped) else signal.SIGINT
        sys.stderr.write(f"{prog}: {signal.Signals(signum).name} while starting; nothing ran\n")
        return 128 + signum
    try:
        return main()
    except KeyboardInterrupt:  # a command that does not stop on Ctrl-C by itself
        _quiet_stdout()
        sys.stderr.write(f"{prog}: interrupted\n")
        return 128 + signal.SIGINT


def smc_traffic() -> int:
    return run("smc-traffic", "stack.traffic.cli:main")


def smc_trace() -> int:
    return run("smc-trace", "dissectors.cli:main")


def smctop() -> int:
    return run("smctop", "smctop.app:main")
