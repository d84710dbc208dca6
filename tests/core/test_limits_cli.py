"""smc-traffic --limit NAME=N sets the stack's resource limits (#15 item 4)."""

from __future__ import annotations

import pytest

from stack.core.config import Limits
from stack.traffic import cli


def config(*args: str):
    ns = cli.parser().parse_args(["server", *args])
    return cli.stack_config(ns, "server").smc.limits


def test_limits_from_the_command_line():
    assert config() == Limits()
    lim = config("--limit", "conns=8", "--limit", "reg-mem=256M", "--limit", "qps=none", "--limit", "LGRS=2")
    assert lim == Limits(lgrs=2, qps=None, reg_mem=256 << 20, conns=8)


@pytest.mark.parametrize("bad", ["conns", "conns=-1", "conns=1.5", "sockets=3", "reg-mem=lots"])
def test_a_bad_limit_is_a_usage_error_not_a_traceback(bad, capsys):
    with pytest.raises(SystemExit) as e:
        config("--limit", bad)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--limit" in err and "Traceback" not in err
