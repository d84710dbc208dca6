"""smc-trace's defects found by a QA pass, each with the input that broke it: an export
whose output was its input, record without a command or with one that cannot start (and
the capture it overwrote), write errors as tracebacks, a summary of a damaged file that
printed nothing, a FIFO that blocked, JSONL told by its first byte, skip notices and errors
of several files that did not say which, a file given twice, and smaller wording."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.stacks import ROOT

from dissectors import cli
from dissectors.capture import CaptureError, read_events
from dissectors.recorder import Recorder
from stack.events import SCHEMA, Skipped, from_json

GOLDEN = Path(ROOT) / "tests" / "golden" / "session.jsonl"


def trace(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "dissectors.cli", *args], text=True, timeout=timeout, cwd=ROOT, **kw)


def _clean(err: str) -> None:
    assert "Traceback" not in err and "Exception ignored" not in err, err


def _golden_lines() -> list[str]:
    return GOLDEN.read_text().splitlines()


@pytest.fixture
def capture(tmp_path) -> Path:
    """The golden session as a recording of ours (pcapng with event records)."""
    path = tmp_path / "run.pcapng"
    rec = Recorder(str(path), interval=3600, clock_offset_ns=0)
    for line in _golden_lines():
        rec.on_event(from_json(line))
    assert rec.close().events == len(_golden_lines())
    return path


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------- 1: -o is an input


@pytest.mark.parametrize("spelling", ["same", "other path", "hard link"])
def test_export_refuses_an_output_that_is_one_of_its_inputs_and_leaves_it_alone(tmp_path, capture, capsys, spelling):
    before = capture.read_bytes()
    out = {"same": str(capture), "other path": str(tmp_path / "." / ".." / tmp_path.name / "run.pcapng"), "hard link": str(tmp_path / "link")}[spelling]
    if spelling == "hard link":
        os.link(capture, out)
    err = _usage_error(capsys, ["export", "--jsonl", str(capture), "-o", out])
    assert f"-o {out}" in err and "is one of the files to read" in err, err
    assert capture.read_bytes() == before


# ---------------------------------------------------------------------------------------- 2 and 3: record


def test_record_with_nothing_after_the_double_dash_is_a_usage_error_and_makes_no_file(tmp_path):
    out = tmp_path / "x.pcapng"
    res = trace("record", "-w", str(out), "--")
    assert res.returncode == 2 and "smc-trace: error: record needs a command after --\n" in res.stderr, res.stderr
    _clean(res.stderr)
    assert not out.exists()


@pytest.fixture
def old(tmp_path, capture) -> tuple[Path, bytes]:
    """An existing capture that a failed recording must not replace."""
    os.chmod(capture, 0o640)
    return capture, capture.read_bytes()


def _only(tmp_path: Path, *names: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary file left behind


@pytest.mark.parametrize("command,words", [
    ("/nonexistent/cmd", "cannot run /nonexistent/cmd: No such file or directory"),
    ("no-such-command-smc-trace", "cannot run no-such-command-smc-trace: not found in PATH"),
    ("{tmp}/plain", "cannot run {tmp}/plain: Permission denied"),  # not executable
    ("{tmp}", "cannot run {tmp}: Permission denied"),  # a folder
])  # fmt: skip
def test_record_of_a_command_that_cannot_start_leaves_the_old_capture(tmp_path, old, command, words):
    path, before = old
    (tmp_path / "plain").write_text("echo hi\n")
    command, words = command.format(tmp=tmp_path), words.format(tmp=tmp_path)
    res = trace("record", "-w", str(path), "--", command)
    assert res.returncode == 2 and words in res.stderr, res.stderr
    _clean(res.stderr)
    assert path.read_bytes() == before
    _only(tmp_path, path.name, "plain")


def test_record_attached_to_a_file_that_is_not_a_socket_is_refused_naming_it(tmp_path, old):
    path, before = old
    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    res = trace("record", "-w", str(path), "--attach", str(plain), "--duration", "1")
    assert res.returncode == 2 and f"{plain} is not a socket" in res.stderr, res.stderr
    _clean(res.stderr)
    assert path.read_bytes() == before
    _only(tmp_path, path.name, "plain")


def test_a_recording_that_writes_nothing_keeps_the_old_file_and_says_so(tmp_path, old):
    path, before = old
    dead = socket.socket(socket.AF_UNIX)  # bound, never listening: connecting is refused
    dead.bind(str(tmp_path / "dead.sock"))
    try:
        res = trace("record", "-w", str(path), "--attach", str(tmp_path / "dead.sock"), "--duration", "1")
    finally:
        dead.close()
    assert res.returncode == 2 and "cannot attach to" in res.stderr and "Connection refused" in res.stderr, res.stderr
    assert f"smc-trace: nothing was recorded: {path} was left as it was" in res.stderr
    _clean(res.stderr)
    assert path.read_bytes() == before
    _only(tmp_path, path.name, "dead.sock")
    # a command that runs and records nothing: the same, with the command's exit code
    res = trace("record", "-w", str(path), "--", "false")
    assert res.returncode == 1 and "was left as it was" in res.stderr, res.stderr
    assert path.read_bytes() == before
    _only(tmp_path, path.name, "dead.sock")


def _serve_one_stack(path: str, lines: list[str]) -> threading.Thread:
    """A stand-in for a stack's control socket: it sends ``lines`` (then ``end``) to the first client."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.sendall(b"".join(x.encode() + b"\n" for x in [json.dumps({"type": "hello", "host": "client"}), *lines, '{"type": "end"}']))
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(4096):  # until the recorder hangs up
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_a_recording_that_wrote_something_replaces_the_old_file_keeping_its_mode(tmp_path, old):
    path, before = old
    events = [json.dumps({"type": "event", "event": json.loads(x)}) for x in _golden_lines()[:5]]
    server = _serve_one_stack(str(tmp_path / "s.sock"), events)
    res = trace("record", "-w", str(path), "--attach", str(tmp_path / "s.sock"), "--duration", "20")
    server.join(10)
    assert res.returncode == 0 and f"written to {path}" in res.stderr and "left as it was" not in res.stderr, res.stderr
    assert path.read_bytes() != before
    assert [e.kind for e in read_events(path)] == [json.loads(x)["kind"] for x in _golden_lines()[:5]]
    assert path.stat().st_mode & 0o777 == 0o640
    _only(tmp_path, path.name, "s.sock")


def test_a_recording_into_a_new_file_is_made_even_when_it_writes_nothing(tmp_path):
    path = tmp_path / "new.pcapng"
    res = trace("record", "-w", str(path), "--", "true")
    assert res.returncode == 0 and "left as it was" not in res.stderr, res.stderr
    assert list(read_events(path)) == []


# ---------------------------------------------------------------------------------------- 4: write errors


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args,to_stdout", [
    (["export", "--jsonl", "{f}", "-o", "/dev/full"], False),
    (["export", "--jsonl", "{f}"], True),
    (["decode", "{f}"], True),
    (["decode", "{f}", "--json"], True),
    (["summary", "{f}"], True),
    (["summary", "{f}", "--json"], True),
])  # fmt: skip
def test_a_full_disk_is_one_line_naming_the_output(capture, args, to_stdout):
    argv = [a.format(f=capture) for a in args]
    with open("/dev/full", "w") as full:
        res = trace(*argv, stdout=full if to_stdout else subprocess.DEVNULL, stderr=subprocess.PIPE)
    name = "standard output" if to_stdout else "/dev/full"
    assert res.returncode == 1 and res.stderr == f"smc-trace: error: cannot write {name}: No space left on device\n", res.stderr


def test_a_reader_that_leaves_is_still_not_an_error(tmp_path):
    lines = _golden_lines()
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({**json.loads(x), "t": json.loads(x)["t"] + 100 * i}) + "\n" for i in range(40) for x in lines))
    proc = subprocess.Popen([sys.executable, "-m", "dissectors.cli", "decode", str(big)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 0 and err == "", err


# ---------------------------------------------------------------------------------------- 5: summary of a damaged file


def _cut(capture: Path, tmp_path: Path) -> tuple[Path, int]:
    """The capture cut in the middle of a block, and how many events are before the cut."""
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(capture.read_bytes()[: capture.stat().st_size // 2 + 3])
    n = 0
    with pytest.raises(CaptureError):
        for _ in read_events(cut, Skipped()):
            n += 1
    assert n > 10
    return cut, n


def test_summary_of_a_damaged_file_prints_what_was_read_then_the_error(capture, tmp_path):
    cut, n = _cut(capture, tmp_path)
    res = trace("summary", str(cut))
    assert res.returncode == 1 and res.stdout.startswith(f"{n} events over "), res.stdout
    assert res.stderr.startswith("smc-trace: error: pcapng block ") and "byte offset" in res.stderr, res.stderr
    res = trace("summary", "--json", str(cut))
    assert res.returncode == 1 and json.loads(res.stdout)["events"] == n and "smc-trace: error: pcapng block " in res.stderr


def test_summary_of_several_files_one_damaged_prints_them_all_then_the_error(capture, tmp_path):
    cut, n = _cut(capture, tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**json.loads(x), "host": "third"}) + "\n" for x in _golden_lines()))
    res = trace("summary", "--json", str(other), str(cut))
    assert res.returncode == 1 and json.loads(res.stdout)["events"] == n + len(_golden_lines()), res.stderr
    assert res.stderr.startswith(f"smc-trace: error: {cut}: pcapng block "), res.stderr
    _clean(res.stderr)


def test_summary_of_a_file_that_is_nothing_prints_only_the_error():
    res = trace("summary", "/etc/hostname")
    assert res.returncode == 1 and res.stdout == "" and "not a pcap or pcapng file" in res.stderr


# ---------------------------------------------------------------------------------------- 6: a FIFO


@pytest.mark.parametrize("cmd", [["decode"], ["summary"], ["export", "--jsonl"]])
def test_a_fifo_is_refused_at_once_without_a_writer(tmp_path, cmd):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    res = trace(*cmd, str(fifo), timeout=20)  # it used to wait in open() for a writer that never came
    assert res.returncode == 1 and res.stderr == f"smc-trace: error: cannot read {fifo}: not a regular file\n", res.stderr


@pytest.mark.parametrize("cmd", [["decode"], ["summary"], ["export", "--jsonl"]])
def test_a_directory_is_refused_in_one_line(tmp_path, cmd):
    res = trace(*cmd, str(tmp_path), timeout=20)  # os.fdopen's IsADirectoryError was a traceback
    assert res.returncode == 1 and res.stderr == f"smc-trace: error: cannot read {tmp_path}: a directory\n", res.stderr


def test_a_fifo_is_refused_by_the_reader_smctop_replays_with(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = f"from dissectors.capture import read_events\ntry:\n    list(read_events({str(fifo)!r}))\nexcept ValueError as e:\n    print(e)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert res.stdout == f"cannot read {fifo}: not a regular file\n", res.stderr


# ---------------------------------------------------------------------------------------- 7: JSONL


@pytest.mark.parametrize("head,bad", [
    ("\n", 0), ("   ", 0), ("\ufeff", 0), ("\ufeff\n  \n", 0), ("\r\n", 0),
    ("# a comment\n", 1), ("[1, 2]\n", 1), ("not json\n", 1), ('"text"\n', 1), ("12\n", 1),
])  # fmt: skip
def test_jsonl_is_told_by_its_first_text_not_its_first_byte(tmp_path, head, bad):
    path = tmp_path / "events.jsonl"
    path.write_text(head + GOLDEN.read_text(), encoding="utf-8")
    skipped = Skipped()
    events = list(read_events(path, skipped))
    assert len(events) == len(_golden_lines()) and skipped.count == bad
    assert skipped.named == ([] if not bad else [skipped.named[0]]) and all(n.startswith("line 1: ") for n in skipped.named)
    res = trace("summary", "--json", str(path))
    assert res.returncode == 0 and json.loads(res.stdout)["events"] == len(events), res.stderr
    assert ("skipped 1 bad event record" in res.stderr) == bool(bad)


@pytest.mark.parametrize("text,words", [("", "it is empty"), ("\n \n\t\n", "it has only blank lines"), ("\ufeff\n", "it has only blank lines")])
def test_a_file_without_events_says_so(tmp_path, text, words):
    path = tmp_path / "none.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CaptureError, match=f"holds no events: {words}"):
        list(read_events(path, Skipped()))
    res = trace("decode", str(path))
    assert res.returncode == 1 and res.stderr == f"smc-trace: error: {path} holds no events: {words}\n", res.stderr


def test_text_without_a_single_event_is_neither_pcap_nor_jsonl(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(CaptureError, match="not a pcap or pcapng file: it starts with 68656c6c at byte offset 0; not JSONL events either: none of its 2 lines"):
        list(read_events(path, Skipped()))


def test_jsonl_whose_every_record_is_bad_is_still_jsonl_each_record_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"kind": "conn.open"}\n\n{"t": "x"}\n')
    skipped = Skipped()
    assert list(read_events(path, skipped)) == [] and skipped.count == 2
    assert [n.partition(":")[0] for n in skipped.named] == ["line 1", "line 3"]


def test_a_bad_first_record_without_skipped_names_its_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("[1]\n" + GOLDEN.read_text())
    with pytest.raises(CaptureError, match="^JSONL events: line 1: an event record must be a JSON object$"):
        list(read_events(path))


# ---------------------------------------------------------------------------------------- 8: several files


@pytest.mark.parametrize("keep", [True, False], ids=["kept_from_the_first_reading", "read_again"])
def test_skip_notices_and_errors_of_several_files_name_the_file(tmp_path, capture, capsys, monkeypatch, keep):
    if not keep:
        monkeypatch.setattr(cli, "KEEP_READ", 0)
    lines = _golden_lines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines[:5] + ["not json"] + lines[5:]) + "\n")
    b.write_text("\n".join(json.dumps({**json.loads(x), "host": "third"}) for x in lines[:5]) + "\n[]\n")
    assert cli.main(["summary", str(a), str(b)]) == 0
    err = capsys.readouterr().err
    assert f"  {a}: line 6: not JSON" in err and f"  {b}: line 6: an event record must be a JSON object" in err, err
    assert cli.main(["summary", str(a)]) == 0  # one file: as before
    assert "\n  line 6: not JSON" in capsys.readouterr().err
    cut, _ = _cut(capture, tmp_path)
    assert cli.main(["export", "--jsonl", str(b), str(cut)]) == 1
    assert f"smc-trace: error: {cut}: pcapng block " in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- 9: a file twice


def test_the_same_file_twice_is_refused_naming_it(tmp_path, capture, capsys):
    err = _usage_error(capsys, ["summary", str(capture), str(capture)])
    assert f"{capture} is given twice: give each file once" in err, err
    link = tmp_path / "link.pcapng"
    os.link(capture, link)
    for cmd in (["decode"], ["export", "--jsonl"], ["summary"]):
        err = _usage_error(capsys, [*cmd, str(capture), str(link)])
        assert f"{link} is given twice ({capture} and {link})" in err, err


# ---------------------------------------------------------------------------------------- 10: wording


def test_a_device_is_refused_in_one_sentence():
    res = trace("summary", "/dev/null")
    assert res.returncode == 1 and res.stderr == "smc-trace: error: cannot read /dev/null: not a regular file\n", res.stderr


def test_rate_errors_speak_of_polls_per_second():
    for value in ("-1", "nan", "x"):
        res = trace("record", "-w", "/nonexistent/x.pcapng", "--kernel", "--rate", value)
        assert res.returncode == 2 and "polls per second" in res.stderr and "seconds are" not in res.stderr, res.stderr


def test_kind_takes_spaces_and_refuses_what_matches_no_kind(tmp_path, capsys):
    for kind in ("con", "conn.x", "cdc.msg.tx"):
        err = _usage_error(capsys, ["decode", str(GOLDEN), "--kind", kind])
        assert f"--kind {kind!r} is not a kind or the prefix of one; the kinds: {', '.join(sorted(SCHEMA))}" in err, err
    assert cli.main(["decode", str(GOLDEN), "--json", "--kind", "conn,cdc.msg"]) == 0
    want = capsys.readouterr().out
    assert want and cli.main(["decode", str(GOLDEN), "--json", "--kind", " conn , cdc.msg "]) == 0
    assert capsys.readouterr().out == want
    assert {json.loads(x)["kind"].split(".")[0] for x in want.splitlines()} == {"conn", "cdc"}


def test_frames_of_a_link_type_we_do_not_read_are_counted_and_named(tmp_path, capsys):
    """A capture of a link type smc-trace does not read used to give 0 events and no word:
    each frame is counted as not decoded, and the note names the interface and link type."""
    path = tmp_path / "odd.pcap"
    frame = bytes(60)
    record = struct.pack("<IIII", 1_765_000_000, 0, len(frame), len(frame)) + frame
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 9999) + record * 3)
    assert cli.main(["summary", str(path)]) == 0
    assert "3 frames could not be decoded" in capsys.readouterr().out
    assert cli.main(["decode", "--kind", "trace.note", str(path)]) == 0
    assert "interface 0: link type 9999 is not one smc-trace reads" in capsys.readouterr().out


@pytest.mark.parametrize("argv, env, message", [
    (["install-plugin", "--dir", ""], {}, "--dir '': give the plugin folder"),
    (["install-plugin", "--dir", "FILE"], {}, "not a directory"),
])  # fmt: skip
def test_install_plugin_refuses_a_folder_it_cannot_mean(argv, env, message, tmp_path, monkeypatch, capsys):
    """--dir '' installed into the default folder, and a file as --dir said 'File exists'."""
    some_file = tmp_path / "run.pcapng"
    some_file.write_bytes(b"x")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(some_file) if a == "FILE" else a for a in argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_number_too_long_to_convert_is_a_bad_record_in_our_words():
    from stack.events import BadRecord, loads

    with pytest.raises(BadRecord, match="a number with more digits than any field holds"):
        loads('{"t": ' + "9" * 5000 + "}")


def test_a_filtered_timeline_keeps_the_traces_times():
    """decode --kind X showed its first line at 0.000000: times from the first line shown,
    so two decodes of one file could not be compared."""
    whole = trace("decode", str(GOLDEN)).stdout.splitlines()
    shown = trace("decode", str(GOLDEN), "--kind", "conn.state").stdout.splitlines()
    assert shown and all(line in whole for line in shown)  # each line as the whole timeline has it, its time included
    assert float(shown[0].split()[0]) > 0
