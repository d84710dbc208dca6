// SPDX-License-Identifier: GPL-2.0
/* smctop's SMC TCP option: a sock_ops program that puts the SMC experimental option
 * (kind 254, length 6, ExID 0xE2D4C3D9) on the SYN and SYN-ACK of the sockets a userspace
 * SMC-R stack opts in, and records whether the peer's SYN or SYN-ACK carried it.
 *
 * Opting in is per socket, through the socket-local storage map smc_opt_sk (userspace
 * updates it with the socket's fd as the key, before connect() or listen()):
 *   client: SMC_OPT_WANT before connect(); the SYN carries the option; when the SYN-ACK
 *           arrives the socket's value gets SMC_OPT_DONE | SMC_OPT_SENT and SMC_OPT_PEER
 *           if the SYN-ACK carried the option.
 *   server: SMC_OPT_WANT on the listener before listen(); each SYN is saved; the SYN-ACK
 *           carries the option only when the SYN did (as the kernel: ireq->smc_ok); each
 *           accepted socket gets SMC_OPT_DONE, plus SMC_OPT_PEER | SMC_OPT_SENT when the
 *           client's SYN carried the option.
 * Sockets nobody opted in are left alone, so the program can sit on the root cgroup.
 * Loaded and attached by native/smcopt.py; the option parser is native/smc_tcpopt.h,
 * whose Python twin is native/tcpopt.py. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SOL_TCP 6
#define TCP_SAVE_SYN 27
#define TCPHDR_SYN 0x02
#define TCPHDR_ACK 0x10

#define SMC_OPT_WANT 1 /* userspace: signal SMC on this socket */
#define SMC_OPT_SENT 2 /* our SYN / SYN-ACK carried the option */
#define SMC_OPT_PEER 4 /* the peer's SYN / SYN-ACK carried the option */
#define SMC_OPT_DONE 8 /* the handshake is over: SMC_OPT_PEER is the answer */

#include "smc_tcpopt.h"

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} smc_opt_sk SEC(".maps");

/* counters for operators: [0] SYNs and SYN-ACKs written with the option, [1] peers seen
 * with it, [2] peers seen without it, [3] SYNs that could not be read */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} smc_opt_stats SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&smc_opt_stats, &i);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline __u32 *want(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	__u32 *v;

	if (!sk || !skops->is_fullsock)
		return 0;
	v = bpf_sk_storage_get(&smc_opt_sk, sk, 0, 0);
	return v && (*v & SMC_OPT_WANT) ? v : 0;
}

/* The SYN of this connection (the one just received when writing the SYN-ACK, else the
 * listener's saved copy): 1 if it carried the option, 0 if not, -1 if unavailable. */
static __always_inline int syn_had_option(struct bpf_sock_ops *skops)
{
	unsigned char hdr[128] = {};
	int n = bpf_getsockopt(skops, SOL_TCP, TCP_BPF_SYN, hdr, SMC_TCPOPT_MAX_HDR);

	if (n < 20 || n > SMC_TCPOPT_MAX_HDR)
		return -1;
	return smc_tcpopt_find(hdr, n);
}

/* The received segment in skb_data (the SYN-ACK in ACTIVE_ESTABLISHED_CB). */
static __always_inline int segment_had_option(struct bpf_sock_ops *skops)
{
	unsigned char hdr[128] = {};
	unsigned char *data = (unsigned char *)(long)skops->skb_data;
	unsigned char *end = (unsigned char *)(long)skops->skb_data_end;
	int i, n = 0;

	for (i = 0; i < SMC_TCPOPT_MAX_HDR; i++) {
		if (data + i + 1 > end)
			break;
		hdr[i] = data[i];
		n = i + 1;
	}
	if (n < 20)
		return -1;
	return smc_tcpopt_find(hdr, n);
}

SEC("sockops")
int smc_opt(struct bpf_sock_ops *skops)
{
	static const unsigned char opt[8] = SMC_TCPOPT_BYTES;
	int one = 1, had;
	__u32 *v;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (want(skops))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		if (want(skops)) {
			bpf_setsockopt(skops, SOL_TCP, TCP_SAVE_SYN, &one, sizeof(one));
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		}
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		if (!(skops->skb_tcp_flags & TCPHDR_SYN))
			break;
		if (skops->skb_tcp_flags & TCPHDR_ACK) { /* SYN-ACK: only when the SYN had it */
			had = syn_had_option(skops);
			if (had < 0)
				count(3);
			if (had <= 0)
				break;
		}
		if (skops->op == BPF_SOCK_OPS_HDR_OPT_LEN_CB) {
			bpf_reserve_hdr_opt(skops, SMC_TCPOPT_LEN, 0);
		} else if (bpf_store_hdr_opt(skops, opt, SMC_TCPOPT_LEN, 0) == 0) {
			count(0);
			v = want(skops); /* the client's own socket (a SYN-ACK's is a request sock) */
			if (v)
				*v |= SMC_OPT_SENT;
		}
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		v = want(skops);
		if (!v)
			break;
		had = segment_had_option(skops);
		count(had > 0 ? 1 : 2);
		*v |= SMC_OPT_DONE | (had > 0 ? SMC_OPT_PEER : 0);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* only children of opted-in listeners have a saved SYN */
		had = syn_had_option(skops);
		if (had < 0 || !skops->sk)
			break;
		v = bpf_sk_storage_get(&smc_opt_sk, skops->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!v)
			break;
		count(had > 0 ? 1 : 2);
		*v |= SMC_OPT_DONE | (had > 0 ? SMC_OPT_PEER | SMC_OPT_SENT : 0);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
