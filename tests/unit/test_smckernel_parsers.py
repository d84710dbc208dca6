"""smckernel's netlink parsers on the lab kernel's (6.12) real replies, recorded as fixtures
by tests/lab/test_kernel_source.py (SMCTOP_LAB_REFRESH_FIXTURE=1), checked against what the
lab's applications did (truth-client.json: the bytes each connection sent and received,
the GID of rxe0) and against bytes that are not what a kernel sends."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smckernel import diag, genl, kio, model
from smckernel import netlink as nl

FIX = Path(__file__).resolve().parent / "fixtures" / "smckernel"
TRUTH = json.loads((FIX / "truth-client.json").read_text())
PEERDECL, NOSMCDEV = 0x05000000, 0x03030000


def raw(name: str) -> model.RawDumps:
    return kio.load_raw(str(FIX / name))


def truth_conn(local: str) -> dict:
    return next(c for c in TRUTH["conns"] if c["local"] == local)


# ---------------------------------------------------------------------------- framing


def test_messages_and_attributes_round_trip_with_padding() -> None:
    inner = nl.attr(1, b"\x01") + nl.attr(2, b"abc\0")
    stream = nl.message(20, nl.NLM_F_MULTI, 7, nl.genl_header(3) + nl.attr(2 | nl.NLA_F_NESTED, inner)) + nl.message(nl.NLMSG_DONE, 0, 7, b"\0" * 4)
    msgs = list(nl.messages(stream))
    assert [(m.type, m.seq) for m in msgs] == [(20, 7), (nl.NLMSG_DONE, 7)]
    cmd, _ver, rest = nl.genl_body(msgs[0].body)
    ((t, v),) = nl.attrs(rest)
    assert (cmd, t) == (3, 2)  # the NESTED flag is not part of the type
    assert nl.attrs(v) == [(1, b"\x01"), (2, b"abc\0")]
    bodies, err, intr = nl.dump_bodies(stream)
    assert len(bodies) == 1 and err == 0 and not intr


@pytest.mark.parametrize("data, what", [
    (b"\x10\x00\x00", "too few for a netlink header"),
    (struct.pack("=IHHII", 99, 3, 0, 1, 0), "claims 99 bytes"),
    (struct.pack("=IHHII", 8, 3, 0, 1, 0), "claims 8 bytes"),
])  # fmt: skip
def test_damaged_streams_raise_format_errors_that_say_where(data: bytes, what: str) -> None:
    with pytest.raises(nl.FormatError, match=what):
        list(nl.messages(data))


def test_a_dump_that_ends_in_an_error_says_which() -> None:
    stream = nl.message(nl.NLMSG_ERROR, 0, 1, struct.pack("=i", -2) + bytes(16))
    assert nl.dump_bodies(stream) == ([], -2, False)
    d = diag.parse_dump(stream)
    assert d.sockets == [] and "error 2 (No such file or directory)" in d.notes[0]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_format_errors(data: bytes) -> None:
    for fn in (lambda: list(nl.messages(data)), lambda: nl.attrs(data), lambda: nl.dump_bodies(data), lambda: diag.parse_dump(data),
               lambda: genl.parse(data, genl.GET_LINK_SMCR), lambda: genl.parse(data, genl.GET_STATS), lambda: nl.parse_family(data)):  # fmt: skip
        try:
            fn()
        except nl.FormatError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 17))
def test_damaged_replies_become_notes_in_a_snapshot_never_exceptions(junk: bytes, cut: int) -> None:
    r = raw("client-open")
    r.diag = r.diag[: len(r.diag) - cut] + junk if cut else junk
    for cmd in list(r.genl):
        r.genl[cmd] = r.genl[cmd][:-cut] + junk if cut else junk
    snap = model.from_kernel(r, 1.0, "a")  # must not raise
    assert isinstance(snap.notes, list)


def test_the_controller_describes_the_family_and_which_commands_dump() -> None:
    bodies, err, _ = nl.dump_bodies((FIX / "client-open" / "family.bin").read_bytes())
    fam = nl.parse_family(bodies[0])
    assert fam.name == "SMC_GEN_NETLINK" and fam.version == 1
    for cmd in (genl.GET_SYS_INFO, genl.GET_LINK_SMCR, genl.GET_DEV_SMCR, genl.GET_STATS, genl.GET_FBACK_STATS, genl.DUMP_UEID):
        assert fam.can_dump(cmd)
    assert fam.ops[genl.ADD_UEID] & nl.GENL_ADMIN_PERM and not fam.can_dump(genl.ADD_UEID)


# ---------------------------------------------------------------------------- smc_diag


def test_smc_diag_shows_each_connection_with_the_applications_byte_counts_as_cursors() -> None:
    d = diag.parse_dump(raw("client-open").diag)
    assert d.notes == [] and len(d.sockets) == len(TRUTH["conns"])
    for s in d.sockets:
        c = truth_conn(s.local)
        assert s.peer == c["peer"] and s.state_name == "ACTIVE" and s.family == 43
        if c["fallback"]:
            assert (s.mode_name, s.fallback_reason, s.peer_diagnosis) == ("TCP", PEERDECL, NOSMCDEV)
            assert s.conninfo is None and s.lgrinfo is None
            continue
        ci = s.conninfo
        assert s.mode_name == "SMCR" and (ci.rmbe_size, ci.peer_rmbe_size, ci.sndbuf_size) == (65536, 65536, 65536)
        assert (ci.tx_prod.wrap, ci.tx_prod.count) == divmod(c["sent"], ci.peer_rmbe_size)
        assert (ci.rx_prod.wrap, ci.rx_prod.count) == divmod(c["received"], ci.rmbe_size)
        assert ci.tx_sent == ci.tx_fin == ci.tx_prep == ci.tx_prod  # everything sent was confirmed
        li = s.lgrinfo
        assert (li.ibname, li.ibport, li.link_id, li.role_name, li.gid) == ("rxe0", 1, 1, "CLNT", TRUTH["gid"])


def test_the_server_sees_a_listener_and_the_mirror_image_of_each_connection() -> None:
    d = diag.parse_dump(raw("server-open").diag)
    listeners = [s for s in d.sockets if s.state_name == "LISTEN"]
    assert len(listeners) == 1 and listeners[0].local == "0.0.0.0:5001" and listeners[0].conninfo is None
    accepted = {s.peer: s for s in d.sockets if s.state_name != "LISTEN"}
    for c in TRUTH["conns"]:
        s = accepted[c["local"]]
        if c["fallback"]:
            assert (s.mode_name, s.fallback_reason, s.peer_diagnosis) == ("TCP", NOSMCDEV, 0)  # it declined
        else:
            assert s.lgrinfo.role_name == "SERV" and s.lgrinfo.peer_gid == TRUTH["gid"]
            assert divmod(c["sent"], 65536) == (s.conninfo.rx_prod.wrap, s.conninfo.rx_prod.count)


def test_after_close_smc_diag_is_empty() -> None:
    assert diag.parse_dump(raw("client-closed").diag).sockets == []


def test_an_attribute_smc_diag_does_not_know_is_named_and_the_rest_still_parses() -> None:
    bodies, _, _ = nl.dump_bodies(raw("client-open").diag)
    body = bodies[0] + nl.attr(9, b"\x01\x02\x03\x04")
    stream = nl.message(20, nl.NLM_F_MULTI, 1, body) + nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, bytes(4))
    d = diag.parse_dump(stream)
    assert len(d.sockets) == 1 and d.sockets[0].unknown_attrs == [9]
    assert d.notes == ["smc_diag: attributes this version does not know were ignored: 9"]


def test_a_socket_too_short_is_left_out_with_a_note() -> None:
    stream = nl.message(20, nl.NLM_F_MULTI, 1, bytes(30)) + nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, bytes(4))
    d = diag.parse_dump(stream)
    assert d.sockets == [] and "smc_diag_msg of 30 bytes" in d.notes[0]


# ---------------------------------------------------------------------------- genl


def test_the_link_group_and_its_link_as_genl_describes_them() -> None:
    p = genl.parse(raw("client-open").genl[genl.GET_LINK_SMCR], genl.GET_LINK_SMCR)
    assert p.notes == [] and p.error == 0
    (g,) = genl.link_groups(p)
    assert (g["role"], g["type"], g["vlan_id"], g["conns"]) == (0, 1, 0, 2)  # client, SINGLE
    assert g["v2"]["version"] == 2 and g["v2"]["negotiated_eid"].strip() == "SMCTOP-LAB" and g["v2"]["peer_host"].strip() == "b"
    assert g["v2_smcr"] == {"direct": 1, "max_conns": 255, "max_links": 2}
    (lk,) = g["links"]
    assert (lk["id"], lk["state"], lk["ib_dev"], lk["ib_port"], lk["gid"], lk["conns"]) == (1, 3, "rxe0", 1, TRUTH["gid"], 2)
    assert lk["net_dev"] == TRUTH["ifindex"] and len(lk["uid"]) == 4


def test_statistics_count_the_applications_bytes_and_the_fallback() -> None:
    r = raw("client-open")
    (st_,) = genl.parse(r.genl[genl.GET_STATS], genl.GET_STATS).records
    smcr = st_["smcr"]
    smc_conns = [c for c in TRUTH["conns"] if not c["fallback"]]
    assert smcr["clnt_v2_succ"] == len(smc_conns) and smcr["clnt_v1_succ"] == 0
    assert smcr["tx_bytes"] == sum(c["sent"] for c in smc_conns) and smcr["rx_bytes"] == sum(c["received"] for c in smc_conns)
    assert smcr["rx_rmb_size"]["64K"] == len(smc_conns)
    fb = genl.fallbacks(genl.parse(r.genl[genl.GET_FBACK_STATS], genl.GET_FBACK_STATS))
    assert fb == {"server_total": 0, "client_total": 1, "reasons": [{"role": "client", "code": PEERDECL, "count": 1}]}


def test_an_attribute_genl_does_not_know_is_named_and_older_kernels_leave_fields_unknown() -> None:
    lgr = nl.attr(1, struct.pack("=I", 0x1234)) + nl.attr(3, b"\x02") + nl.attr(77, b"new!")
    stream = nl.message(0x20, nl.NLM_F_MULTI, 1, nl.genl_header(genl.GET_LGR_SMCR) + nl.attr(genl.GEN_LGR_SMCR, lgr))
    stream += nl.message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, bytes(4))
    p = genl.parse(stream, genl.GET_LGR_SMCR)
    assert p.notes == ["GET_LGR_SMCR: attributes this version does not know were ignored: lgr.77"]
    snap = model.from_kernel(model.RawDumps(genl={genl.GET_LGR_SMCR: stream}), 1.0, "old")
    (g,) = snap.link_groups
    assert (g.id, g.type, g.role, g.sndbuf_alloc, g.peer_host) == ("00001234", "SYM", None, None, None)
    assert "links unknown: the kernel did not answer GET_LINK_SMCR" in snap.notes


def test_ueids_devices_and_system_info() -> None:
    snap = model.from_kernel(raw("client-open"), 1.0, "a")
    assert snap.ueids == ["SMCTOP-LAB"]
    (dev,) = snap.devices
    assert dev.name == "rxe0" and dev.crit is True and dev.pci_device is None  # Soft-RoCE has no PCI parent
    assert [(p.port, p.net_dev, p.state, p.links) for p in dev.ports] == [(1, "eth0", "ACTIVE", 1)]
    assert snap.system == {"version": 2, "release": 1, "host": "a", "seid": None, "smcr_v2": True, "ism_v2": False}


# ---------------------------------------------------------------------------- the snapshot


def test_connections_are_tied_to_the_link_group_whose_link_they_name() -> None:
    snap = model.from_kernel(raw("client-open"), 1.0, "a")
    (g,) = snap.link_groups
    for c in snap.connections:
        t = truth_conn(c.local)
        if t["fallback"]:
            assert c.lgr is None and c.mode == "TCP" and c.role is None  # the kernel does not say who connected
        else:
            assert (c.lgr, c.link, c.role, c.version) == (g.id, 1, "client", 2)
            assert (c.bytes_sent, c.bytes_received) == (t["sent"], t["received"])


def test_link_groups_of_other_namespaces_are_left_out() -> None:
    r = raw("client-open")
    r.net_cookie += 1
    snap = model.from_kernel(r, 1.0, "a")
    assert snap.link_groups == [] and snap.links == []
    assert "1 link group(s) of other network namespaces left out" in snap.notes


def test_the_stack_shape_is_what_smctop_and_recordings_take() -> None:
    from stack.events import check_snapshot

    for name in ("client-open", "server-open", "client-closed"):
        snap = model.from_kernel(raw(name), 1.0, "a")
        for i, c in enumerate(snap.connections, 1):
            c.id = i
        d = model.to_stack_snapshot(snap)
        assert check_snapshot(d) is None, (name, check_snapshot(d))
        assert len(d["conns"]) == len([c for c in snap.connections if c.state != "LISTEN"])
