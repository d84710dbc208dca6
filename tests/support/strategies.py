"""Hypothesis strategies producing every message type the wire codecs encode."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from stack.wire import cdc, clc, llc, roce

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u24 = st.integers(0, 0xFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
nib = st.integers(0, 15)


def raw(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


ipv4 = st.builds(ipaddress.IPv4Address, u32)
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, (1 << 128) - 1))

prefix_area = st.builds(
    clc.IpPrefixArea,
    subnet=ipv4,
    prefix_len=st.integers(0, 32),
    ipv6=st.lists(st.builds(clc.Ipv6Prefix, ipv6, st.integers(0, 128)), max_size=8).map(tuple),
)
smcd_area = st.builds(clc.SmcdArea, ism_gid=u64, ism_chid=u16, vendor_oui=raw(3), vendor_options=raw(5))


def v2_extension(with_smcd: bool) -> st.SearchStrategy[clc.V2Extension]:
    smcd = st.builds(clc.SmcdV2Extension, seid=raw(32), gids=st.lists(st.tuples(u64, u16), max_size=8).map(tuple)) if with_smcd else st.none()
    return st.builds(
        clc.V2Extension,
        eids=st.lists(raw(32), max_size=8).map(tuple),
        roce_gid=raw(16),
        release=nib,
        seid_flag=st.booleans(),
        max_conns=u8,
        max_links=u8,
        feature_mask=u16,
        smcd=smcd,
    )


@st.composite
def proposals(draw) -> clc.Proposal:
    common = dict(peer_id=draw(raw(8)), gid=draw(raw(16)), mac=draw(raw(6)), eyecatcher=draw(st.sampled_from(["SMCR", "SMCD"])))
    if draw(st.booleans()):
        # RFC 7609 form: version 1, no SMC-D area
        t1 = draw(st.sampled_from([clc.SmcType.R, clc.SmcType.D, clc.SmcType.B]))
        t2 = draw(st.sampled_from(list(clc.SmcType)))  # reserved bits in a version 1 header
        return clc.Proposal(**common, typev1=t1, typev2=t2, version=1, prefix=draw(prefix_area), smcd=None)
    version = draw(st.sampled_from([1, 2, 3]))
    t1 = draw(st.sampled_from(list(clc.SmcType)))
    t2 = draw(st.sampled_from(list(clc.SmcType)))
    if version == 1 and t1 == clc.SmcType.N:
        t1 = clc.SmcType.R
    if version >= 2 and t1 == clc.SmcType.N and t2 == clc.SmcType.N:
        t2 = clc.SmcType.R
    return clc.Proposal(
        **common,
        typev1=t1,
        typev2=t2,
        version=version,
        prefix=draw(prefix_area) if t1 != clc.SmcType.N else None,
        smcd=draw(smcd_area.filter(lambda a: t1 != clc.SmcType.N or (a.ism_gid & 0xFF) <= 8)),
        v2=draw(v2_extension(t2.has_d)) if version >= 2 and t2 != clc.SmcType.N else None,
    )


fce = st.builds(
    clc.FirstContactExt,
    v2_direct=st.booleans(),
    os_type=nib,
    release=nib,
    hostname=raw(32),
    max_conns=u8,
    max_links=u8,
    feature_mask=u16,
    vendor_options=u32,
)


@st.composite
def accept_confirms(draw) -> clc.Accept | clc.Confirm:
    version = draw(st.sampled_from([1, 2]))
    first = draw(st.booleans())
    kind = draw(st.sampled_from([clc.Accept, clc.Confirm]))
    fields = dict(
        peer_id=draw(raw(8)), gid=draw(raw(16)), mac=draw(raw(6)), qpn=draw(u24), rmb_rkey=draw(u32),
        rmbe_alert_token=draw(u32), rmbe_size=draw(nib), qp_mtu=draw(nib), rmb_vaddr=draw(u64), psn=draw(u24),
        first_contact=first, version=version, rmbe_idx=draw(u8), eyecatcher=draw(st.sampled_from(["SMCR", "SMCD"])),
    )  # fmt: skip
    if version == 2:
        fields["eid"] = draw(raw(32))
        if first:
            fields["fce"] = draw(fce)
            if kind is clc.Confirm:
                fields["gids"] = tuple(draw(st.lists(raw(16), max_size=4)))
    return kind(**fields)


declines = st.builds(
    clc.Decline,
    peer_id=raw(8),
    diagnosis=u32,
    out_of_sync=st.booleans(),
    os_type=nib,
    version=st.integers(1, 15),
    extra_diagnosis=st.one_of(st.none(), st.tuples(u32, u32, u32, u32)),
    eyecatcher=st.sampled_from(["SMCR", "SMCD"]),
)

clc_messages = st.one_of(proposals(), accept_confirms(), declines)

# ------------------------------------------------------------------ LLC

rkey_triples = st.builds(llc.RkeyTriple, u32, u32, u64)
rtokens = st.builds(llc.Rtoken, u8, u32, u64)
v12 = st.sampled_from([1, 2])

llc_confirm_link = st.builds(
    llc.ConfirmLink, version=v12, response=st.booleans(), mac=raw(6), gid=raw(16), qpn=u24, link_num=u8,
    link_uid=raw(4), max_links=u8, max_conns=u8, rmbe_eyec_flags=st.integers(0, 3),
)  # fmt: skip


@st.composite
def llc_add_link(draw) -> llc.AddLink:
    version = draw(v12)
    ext = {}
    if version == 2:
        ext = dict(direct=draw(st.booleans()), target_gid=draw(raw(16)), rkeys=tuple(draw(st.lists(rkey_triples, max_size=20))))
    return llc.AddLink(
        version=version, response=draw(st.booleans()), mac=draw(raw(6)), gid=draw(raw(16)), qpn=draw(u24),
        link_num=draw(u8), qp_mtu=draw(nib), psn=draw(u24), rejected=draw(st.booleans()), reject_reason=draw(nib), **ext,
    )  # fmt: skip


@st.composite
def llc_add_link_cont(draw) -> llc.AddLinkCont:
    n = draw(u8)
    rkeys = tuple(draw(st.lists(rkey_triples, min_size=min(n, 2), max_size=min(n, 2))))
    return llc.AddLinkCont(response=draw(st.booleans()), link_num=draw(u8), num_rkeys=n, rkeys=rkeys)


llc_delete_link = st.builds(llc.DeleteLink, version=v12, response=st.booleans(), link_num=u8, reason=u32, all=st.booleans(), orderly=st.booleans())


@st.composite
def llc_req_add_link(draw) -> llc.RequestAddLink:
    version = draw(v12)
    gids = tuple(draw(st.lists(raw(16), max_size=1 if version == 1 else 12)))
    return llc.RequestAddLink(version=version, response=draw(st.booleans()), gids=gids, rejected=draw(st.booleans()), reject_reason=draw(nib))


llc_confirm_rkey = st.builds(
    llc.ConfirmRkey, version=v12, response=st.booleans(), rkey=u32, vaddr=u64,
    others=st.lists(rtokens, max_size=2).map(tuple), negative=st.booleans(), retry=st.booleans(),
)  # fmt: skip


@st.composite
def llc_confirm_rkey_cont(draw) -> llc.ConfirmRkeyCont:
    n = draw(u8)
    return llc.ConfirmRkeyCont(
        response=draw(st.booleans()), num_rkeys=n, tokens=tuple(draw(st.lists(rtokens, min_size=min(n, 3), max_size=min(n, 3)))),
        negative=draw(st.booleans()),
    )  # fmt: skip


llc_test_link = st.builds(llc.TestLink, version=v12, response=st.booleans(), user_data=raw(16))


@st.composite
def llc_delete_rkey(draw) -> llc.DeleteRkey:
    version = draw(v12)
    rkeys = tuple(draw(st.lists(u32, max_size=8 if version == 1 else 40)))
    extra = {"err_mask": draw(u8)} if version == 1 else {"num_invalid": draw(u8)}
    return llc.DeleteRkey(version=version, response=draw(st.booleans()), rkeys=rkeys, negative=draw(st.booleans()), **extra)


llc_messages = st.one_of(
    llc_confirm_link, llc_add_link(), llc_add_link_cont(), llc_delete_link, llc_req_add_link(), llc_confirm_rkey,
    llc_confirm_rkey_cont(), llc_test_link, llc_delete_rkey(),
)  # fmt: skip

# ------------------------------------------------------------------ CDC

cursors = st.builds(cdc.Cursor, u16, u32)
cdc_messages = st.builds(
    cdc.CdcMessage, seqno=u16, token=u32, prod=cursors, cons=cursors,
    write_blocked=st.booleans(), urg_data_pending=st.booleans(), urg_data_present=st.booleans(),
    cons_curs_upd_req=st.booleans(), failover_validation=st.booleans(), peer_done_writing=st.booleans(),
    peer_conn_closed=st.booleans(), peer_conn_abort=st.booleans(),
)  # fmt: skip

# ------------------------------------------------------------------ RoCE


@st.composite
def roce_packets(draw) -> roce.RocePacket:
    opcode = draw(st.sampled_from(list(roce.Opcode)))
    exts = roce.extension_headers(opcode)
    other_len = sum({"ieth": 4, "deth": 8, "atomiceth": 28, "atomicacketh": 8}.get(e, 0) for e in exts)
    bth = roce.Bth(
        opcode=opcode, dest_qp=draw(u24), psn=draw(u24), se=draw(st.booleans()), ackreq=draw(st.booleans()),
        pkey=draw(u16), migreq=draw(st.booleans()), tver=draw(nib), fecn=draw(st.booleans()), becn=draw(st.booleans()),
    )  # fmt: skip
    payload = draw(st.binary(max_size=300))
    return roce.RocePacket(
        bth=roce.Bth(**{**bth.__dict__, "pad": -len(payload) % 4}),
        reth=draw(st.builds(roce.Reth, u64, u32, u32)) if "reth" in exts else None,
        aeth=draw(st.builds(roce.Aeth, u8, u24)) if "aeth" in exts else None,
        imm=draw(u32) if "imm" in exts else None,
        other=draw(raw(other_len)),
        payload=payload,
    )


@st.composite
def mutated(draw, messages: st.SearchStrategy, encode=lambda m: m.encode()) -> bytes:
    """A valid encoding with a few bytes flipped, truncated or extended."""
    data = bytearray(encode(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "extend"]))
        if action in ("flip", "set") and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = data[i] ^ (1 << draw(st.integers(0, 7))) if action == "flip" else draw(u8)
        elif action == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)
