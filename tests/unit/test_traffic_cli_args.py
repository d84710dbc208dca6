"""smc-traffic's command line: a bad value is a usage error (exit 2) naming the option and
the value, never a traceback; IPv6 addresses in brackets work end to end; a run always has
an end; the server counts request/response sessions it saw complete as verified."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.stacks import addrs, has_ipv6_loopback

from native import softroce
from stack.traffic import cli
from stack.verbs.soft import native as soft_native

ROOT = Path(__file__).resolve().parents[2]


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    """cli.main in this process: its exit status (argparse's SystemExit too), stdout, stderr."""
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack.traffic.cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _server(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stack.traffic.cli", "server", "--json", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_banner(proc: subprocess.Popen) -> str:
    line = proc.stderr.readline()  # with --json the banner goes to stderr, once the server listens
    assert line.startswith("smc-traffic server on"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return line


class _Serving:
    """A server for the length of a with-block; its report (``rep``, ``err``, ``returncode``)
    once the block is over and the server has ended."""

    def __init__(self, *argv: str) -> None:
        self.proc = _server(*argv)
        try:
            self.banner = _wait_banner(self.proc)
        except BaseException:
            self.proc.kill()
            self.proc.communicate()
            raise
        self.rep: dict | None = None
        self.err = ""
        self.returncode: int | None = None

    def __enter__(self) -> "_Serving":
        return self

    def __exit__(self, *exc) -> None:
        out, self.err = self.proc.communicate(timeout=60)
        self.returncode = self.proc.returncode
        self.rep = json.loads(out) if out.strip().startswith("{") else None


@pytest.mark.parametrize("argv,words", [
    (["client", "--seed", "-1", "--bytes", "1M"], "argument --seed: -1 is out of range: a seed is 0 to 4294967295"),
    (["client", "--seed", "18446744073709551616", "--bytes", "1M"], "argument --seed: 18446744073709551616 is out of range"),
    (["client", "--seed", "x"], "argument --seed: 'x' is not a whole number"),
    (["client", "--mode", "rr", "--size", "5G", "--count", "1"], "argument --size: '5G': a message is at most 16M"),
    (["client", "--device", "notanip"], "argument --device: 'notanip' is not an IPv4 address"),
    (["server", "--device", "notanip"], "argument --device: 'notanip' is not an IPv4 address"),
    # a wildcard device would take port 4791 of every address: no client on the host could start
    (["server", "--device", "0.0.0.0"], "argument --device: '0.0.0.0': the unspecified address listens on every address"),
    (["client", "--device", "224.0.0.1"], "argument --device: '224.0.0.1': a multicast or broadcast address is no device's address"),
    (["server", "--listen", "::1:5000"], "an IPv6 address goes in brackets, like [::1]:5000"),
    (["client", "--connect", "[zz]:5000"], "'[zz]:5000': [zz] is not an IPv6 address"),
    (["client", "--connect", "999.1.1.1:5000", "--bytes", "1M"], "--connect 999.1.1.1:5000: cannot resolve host '999.1.1.1'"),
    (["client", "--host-name", ""], "argument --host-name: a host name must not be empty"),
    (["server", "--host-name", "a\x1b[2Jb"], "a host name must not contain '\\x1b'"),
    (["client", "--host-name", "a\nb"], "a host name must not contain '\\n'"),
    (["client", "--host-name", "../x"], "a host name must not contain '/'"),
    (["client", "--bytes", "0"], "argument --bytes: 0: give at least 1 byte, or leave --bytes out to run for --duration"),
    (["client", "--duration", "0"], "--duration 0 with no --bytes: the run would never end"),
    (["client", "--mode", "rr", "--duration", "0"], "--duration 0 with no --count: the run would never end"),
    (["client", "--mode", "crr", "--duration", "0", "--count", "0"], "--duration 0 with no --count"),
    # an option of another mode was ignored (a bulk with --count 5 ran for --duration)
    (["client", "--mode", "bulk", "--count", "5"], "--count does not apply to --mode bulk (its own: --bytes, --direction)"),
    (["client", "--size", "100"], "--size does not apply to --mode bulk"),
    (["client", "--mode", "rr", "--bytes", "1M", "--count", "3"], "--bytes does not apply to --mode rr (its own: --size, --count)"),
    (["client", "--mode", "crr", "--direction", "down", "--bytes", "1M"], "--bytes and --direction do not apply to --mode crr"),
    (["server", "--decline", "-1"], "argument --decline: reason -1 is not a decline code (1 to 0xffffffff)"),
    (["server", "--decline", "0x100000000"], "reason 0x100000000 is not a decline code"),
    # a server on another host, the client's device left at its default on loopback: once, not an EINVAL per connection
    (["client", "--connect", "192.0.2.1:5000", "--bytes", "1M"],
     "--connect 192.0.2.1:5000: cannot be reached from 127.1.0.1, the address the client's connections leave from (its first --device, 127.1.0.1 by default)"),
])  # fmt: skip
def test_bad_arguments_are_usage_errors_naming_option_and_value(capsys, argv, words) -> None:
    rc, out, err = _main(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert words in err, err
    assert "Traceback" not in err and out == "", (out, err)


def test_a_bad_seed_is_a_usage_error_as_a_process_too() -> None:
    res = _cli("client", "--connect", "127.1.0.2:5101", "--seed", "-1", "--bytes", "1M")
    assert res.returncode == 2 and "argument --seed: -1 is out of range" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "struct.error" not in res.stderr, res.stderr


def test_a_server_listening_on_every_address_has_its_device_on_one() -> None:
    # its device was 0.0.0.0, bound to UDP 4791 of every address: a client on the same host
    # then failed with "cannot bind 127.1.0.1:4791: Address already in use"
    for listen, device in (("0.0.0.0:5000", "127.1.0.2"), ("[::]:5000", "127.1.0.2"), ("127.1.3.2:5000", "127.1.3.2")):
        args = cli.parser().parse_args(["server", "--listen", listen])
        assert [d.addr for d in cli.stack_config(args, "server").devices] == [device], listen


def test_host_and_port_parsing() -> None:
    assert cli.hostport("[::1]:5000") == ("::1", 5000)
    assert cli.hostport("127.1.0.2:5000") == ("127.1.0.2", 5000)
    assert cli.hostport("localhost:80") == ("localhost", 80)
    assert cli.hostport_text("::1", 5000) == "[::1]:5000"
    for bad, why in (("127.1.0.2:70000", "port 70000 is out of range"), ("127.1.0.2:0", "port 0 is out of range"), ("127.1.0.2:x", "is not HOST:PORT"),
                     ("::1:5000", "in brackets"), ("[zz]:5000", "is not an IPv6 address")):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            cli.hostport(bad)
    args = cli.parser().parse_args(["server", "--listen", "[::1]:5000"])
    assert cli.default_device(args, "server") == "127.1.0.2"  # a soft device needs an IPv4 address
    args = cli.parser().parse_args(["server", "--listen", "127.1.3.4:5000"])
    assert cli.default_device(args, "server") == "127.1.3.4"


def test_the_largest_seed_runs_and_verifies() -> None:
    client, server = addrs()
    with _Serving("--listen", f"{server}:5210", "--count", "1", "--duration", "60") as srv:
        res = _cli("client", "--connect", f"{server}:5210", "--device", client, "--seed", "4294967295", "--bytes", "256K", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["verified"] == 1
    assert srv.returncode == 0 and srv.rep["verified"] == 1, srv.err


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 on the loopback interface (::1)")
def test_ipv6_in_brackets_runs_smcr_v1_end_to_end() -> None:
    client, server = addrs()
    with _Serving("--listen", "[::1]:5211", "--device", server, "--count", "1", "--duration", "60") as srv:
        assert "smc-traffic server on [::1]:5211" in srv.banner
        res = _cli("client", "--connect", "[::1]:5211", "--device", client, "--bytes", "1M", "--direction", "both", "--json")
        assert res.returncode == 0, res.stderr
        rep = json.loads(res.stdout)
        # as the kernel: an IPv6 connection negotiates SMC-Rv1 (the devices stay IPv4)
        assert (rep["modes"], rep["versions"], rep["verified"]) == ({"SMCR": 1}, {"1": 1}, 1), rep
        assert rep["bytes_sent"] == rep["bytes_received"] == 1 << 20
    assert srv.returncode == 0 and srv.rep["verified"] == 1, srv.err


def test_duration_zero_with_bytes_is_a_bounded_run() -> None:
    client, server = addrs()
    with _Serving("--listen", f"{server}:5212", "--count", "1", "--duration", "60"):
        res = _cli("client", "--connect", f"{server}:5212", "--device", client, "--duration", "0", "--bytes", "2M", "--json")
        assert res.returncode == 0, res.stderr
        rep = json.loads(res.stdout)
        assert rep["bytes_sent"] == 2 << 20 and rep["verified"] == 1, rep


def test_the_server_counts_completed_rr_and_crr_sessions_as_verified() -> None:
    client, server = addrs()
    # 2 rr connections and 4 crr connections: 6 sessions, each ended by a client that checked every reply
    with _Serving("--listen", f"{server}:5213", "--count", "6", "--duration", "60") as srv:
        rr = _cli("client", "--connect", f"{server}:5213", "--device", client, "--mode", "rr", "--count", "3", "--connections", "2", "--json")
        crr = _cli("client", "--connect", f"{server}:5213", "--device", client, "--mode", "crr", "--count", "4", "--json")
        assert rr.returncode == 0 and crr.returncode == 0, (rr.stderr, crr.stderr)
        assert json.loads(rr.stdout)["verified"] == 2 and json.loads(crr.stdout)["verified"] == 4
    assert srv.returncode == 0, srv.err
    assert (srv.rep["connections"], srv.rep["verified"], srv.rep["errors"]) == (6, 6, []), srv.rep


def test_an_events_file_that_cannot_be_written_ends_the_recording_not_the_run() -> None:
    """--events on a full disk raised into the stack's completion handler: tracebacks, and the
    transfer never finished. Now the transfer completes and verifies, the report names the
    events file, and the exit code says something went wrong."""
    client, server = addrs()
    with _Serving("--listen", f"{server}:5214", "--count", "1", "--duration", "60"):
        res = _cli("client", "--connect", f"{server}:5214", "--device", client, "--bytes", "4M", "--events", "/dev/full", "--json")
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        rep = json.loads(res.stdout)
        assert rep["bytes_sent"] == 4 << 20 and rep["verified"] == 1, rep
        assert rep["errors"] == ["events file /dev/full: No space left on device; the events after that were not written"]
        assert "writing events to /dev/full failed (No space left on device)" in res.stderr


def test_the_client_names_the_peers_reason_for_declining() -> None:
    client, server = addrs()
    with _Serving("--listen", f"{server}:5215", "--decline", "DIFFPREFIX", "--count", "3", "--duration", "60") as srv:
        text = _cli("client", "--connect", f"{server}:5215", "--device", client, "--mode", "crr", "--count", "2", "--no-progress")
        js = _cli("client", "--connect", f"{server}:5215", "--device", client, "--mode", "rr", "--count", "1", "--json")
        assert text.returncode == 0 and js.returncode == 0, (text.stderr, js.stderr)
        assert "  fallback:  0x05000000 PEERDECL (peer 0x03070000 DIFFPREFIX)  x2\n" in text.stdout, text.stdout
        rep = json.loads(js.stdout)
        assert rep["fallback_details"] == {"0x05000000 PEERDECL (peer 0x03070000 DIFFPREFIX)": 1}, rep
        assert rep["fallbacks"] == {"0x05000000 PEERDECL": 1}, rep
    assert srv.returncode == 0 and srv.rep["fallback_details"] == srv.rep["fallbacks"] == {"0x03070000 DIFFPREFIX": 3}, srv.rep


@pytest.mark.parametrize("mode,sig", [(["--mode", "bulk", "--direction", "both", "--json"], signal.SIGINT), (["--mode", "crr"], signal.SIGTERM)])
def test_a_signal_ends_the_client_with_the_report_of_what_it_did_marked_interrupted(mode, sig) -> None:
    """SIGINT used to end the client with exit 130 and nothing printed: no report at all."""
    client, server = addrs()
    with _Serving("--listen", f"{server}:5216", "--duration", "60") as srv:
        proc = subprocess.Popen([sys.executable, "-m", "stack.traffic.cli", "client", "--connect", f"{server}:5216", "--device", client,
                                 "--duration", "60", "--progress", *mode], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            seen = ""
            while "MB/s" not in seen:  # the first progress line: traffic is flowing
                c = proc.stderr.read(1)
                assert c, (seen, proc.communicate())
                seen += c
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        srv.proc.send_signal(signal.SIGINT)  # the server's normal end
    assert proc.returncode == 128 + sig and "Traceback" not in err, (proc.returncode, err)
    name = signal.Signals(sig).name
    if "--json" in mode:
        rep = json.loads(out)
        assert (rep["interrupted"], rep["signal"], rep["connections"], rep["mode"]) == (True, name, 1, "bulk"), rep
        assert rep["bytes_sent"] > 0 and rep["bytes_received"] > 0, rep
    else:
        assert out.startswith("mode crr: ") and f", interrupted by {name}: what it did until then\n" in out.splitlines(True)[0], out
        assert int(out.split("sent ")[1].split()[0].replace(",", "")) > 0, out


@pytest.mark.skipif(not softroce.available()[0], reason="the compiled engine is not built")
def test_the_banner_and_the_report_name_the_engine_as_it_runs(capsys, monkeypatch) -> None:
    """GSO "auto" turns on after the device's watcher first looks for a capture: a banner or
    a report read before that said "native", the rest of the run "native (GSO)". A new
    device now waits for that first look; a slow one (no capture) showed the race every time."""
    real_sleep = time.sleep

    def slow_no_capture(ifindexes):
        real_sleep(0.2)
        return False

    monkeypatch.setattr(soft_native, "captured", slow_no_capture)
    client, server = addrs()
    rc, out, err = _main(capsys, "server", "--listen", f"{server}:5217", "--engine", "native", "--gso", "auto", "--duration", "0.01", "--json")
    assert rc == 0, err
    assert f"; engine {server} native (GSO)\n" in err and json.loads(out)["engine"] == f"{server} native (GSO)", (out, err)
    for extra in (["--json"], ["--no-progress"]):  # nothing listens: the connect is refused at once
        rc, out, err = _main(
            capsys, "client", "--connect", f"{server}:5217", "--device", client, "--engine", "native", "--gso", "auto", "--bytes", "1M", *extra
        )
        assert rc == 1, err
        engine = json.loads(out)["engine"] if extra == ["--json"] else out.split("engine:    ")[1].split("\n")[0]
        assert engine == f"{client} native (GSO)", out


def test_the_help_keeps_the_examples_line_continuation() -> None:
    res = _cli("--help")
    assert res.returncode == 0
    assert "--bytes 1G \\\n        --fail-link 2 --restore-link 5" in res.stdout, res.stdout
    assert "1G         --fail-link" not in res.stdout
