/* The SMC experimental TCP option (RFC 7609 A.1, RFC 6994): kind 254, length 6,
 * ExID 0xE2D4C3D9, as Linux writes it (tcp_output.c, smc_options_write) and accepts it
 * (tcp_input.c, smc_parse_options: a SYN, an even length >= 6, the ExID at the front).
 *
 * One parser for the BPF program (native/smc_opt.bpf.c) and for the userspace check
 * binary (native/tcpopt_check.c) that tests it against its pure-Python twin
 * (native/tcpopt.py). No libc, no kernel headers: plain bounded loops the verifier takes.
 */
#ifndef SMC_TCPOPT_H
#define SMC_TCPOPT_H

#define SMC_TCPOPT_KIND 254
#define SMC_TCPOPT_LEN 6
#define SMC_TCPOPT_MAX_HDR 60 /* a TCP header with the largest data offset */
#define SMC_TCPOPT_SYN 0x02

#ifndef SMC_INLINE
#define SMC_INLINE static inline __attribute__((always_inline))
#endif

/* off &= 63, which the compiler cannot drop although the caller's checks make it a no-op:
 * the verifier needs the bound it gives every stack index. */
#ifdef __bpf__
#define SMC_CLAMP63(x) asm volatile("%[v] &= 63" : [v] "+r"(x))
#else
#define SMC_CLAMP63(x) ((x) &= 63)
#endif

/* The option bytes we write. */
#define SMC_TCPOPT_BYTES { SMC_TCPOPT_KIND, SMC_TCPOPT_LEN, 0xE2, 0xD4, 0xC3, 0xD9 }

/* 1 when the TCP header in hdr[0..len) is a SYN (or SYN-ACK) carrying the SMC option,
 * 0 when it is not, -1 when hdr is not a TCP header (shorter than 20 bytes or than its
 * data offset). hdr must point to a 128-byte buffer (the verifier sees indexes
 * up to 63 + 5); bytes past len are never read. Same rules as the kernel's
 * tcp_parse_options: EOL ends the list, NOP is skipped, a length < 2 or one that runs
 * past the options ends the parse without a match. */
SMC_INLINE int smc_tcpopt_find(const unsigned char *hdr, int len)
{
	int doff, off, i;

	if (len < 20 || len > SMC_TCPOPT_MAX_HDR)
		return -1;
	doff = (hdr[12] >> 4) * 4;
	if (doff < 20 || doff > len)
		return -1;
	if (!(hdr[13] & SMC_TCPOPT_SYN))
		return 0;
	off = 20;
	for (i = 0; i < 40; i++) { /* at most 40 option bytes: at most 40 steps */
		int kind, size;

		if (off >= doff || off >= SMC_TCPOPT_MAX_HDR - 1)
			return 0;
		SMC_CLAMP63(off);
		kind = hdr[off];
		if (kind == 0) /* EOL */
			return 0;
		if (kind == 1) { /* NOP */
			off++;
			continue;
		}
		if (doff - off < 2)
			return 0;
		size = hdr[off + 1];
		if (size < 2 || size > doff - off)
			return 0;
		if (kind == SMC_TCPOPT_KIND && !(size & 1) && size >= SMC_TCPOPT_LEN &&
		    hdr[off + 2] == 0xE2 && hdr[off + 3] == 0xD4 &&
		    hdr[off + 4] == 0xC3 && hdr[off + 5] == 0xD9)
			return 1;
		off += size;
	}
	return 0;
}

#endif
