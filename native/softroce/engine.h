/* The compiled soft RoCEv2 engine: the data path of the soft provider in C.
 *
 * It is the twin of stack/verbs/soft/rc.py and device.py: the same RC requester and
 * responder (PSNs, go-back-N window, ACK/NAK, local ACK timeout, RNR), the same frames
 * byte for byte, the same checks before a byte of RDMA WRITE moves. What differs is
 * where the work happens: a pthread per device plays the NIC and never takes the
 * Python interpreter lock; frames leave and arrive in batches (sendmmsg/recvmmsg);
 * completions go to a ring whose eventfd the asyncio loop watches.
 *
 * Nothing here knows Python: module.c binds it. Object names (keys, QP numbers,
 * virtual addresses) are chosen by the Python side, shared with the pure-Python engine.
 */
#ifndef SOFTROCE_ENGINE_H
#define SOFTROCE_ENGINE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ibverbs numbers (stack/verbs/api.py) */
enum { QPS_RESET = 0, QPS_INIT = 1, QPS_RTR = 2, QPS_RTS = 3, QPS_ERR = 6 };
enum { WR_RDMA_WRITE = 0, WR_RDMA_WRITE_WITH_IMM = 1, WR_SEND = 2, WR_SEND_WITH_IMM = 3 };
enum { SF_SIGNALED = 2, SF_SOLICITED = 4, SF_INLINE = 8 };
enum { ACC_LOCAL_WRITE = 1, ACC_REMOTE_WRITE = 2 };
enum {
    WC_SUCCESS = 0, WC_LOC_LEN_ERR = 1, WC_LOC_PROT_ERR = 4, WC_WR_FLUSH_ERR = 5, WC_REM_INV_REQ_ERR = 9,
    WC_REM_ACCESS_ERR = 10, WC_REM_OP_ERR = 11, WC_RETRY_EXC_ERR = 12, WC_RNR_RETRY_EXC_ERR = 13,
};
enum { WCO_SEND = 0, WCO_RDMA_WRITE = 1, WCO_RECV = 128, WCO_RECV_RDMA_WITH_IMM = 129 };
enum { EV_CQ_ERR = 0, EV_QP_REQ_ERR = 2, EV_QP_ACCESS_ERR = 3, EV_PORT_ACTIVE = 9, EV_PORT_ERR = 10 };

#define SR_WINDOW 256      /* packets in flight per QP */
#define SR_ACK_EVERY 32    /* ask for an ACK at least every this many packets */
/* a PSN further than this from the expected one comes from no honest requester (it keeps at
 * most SR_WINDOW packets in flight): counted, dropped unanswered, and at most
 * SR_SUSPECT_PER_SECOND a second examined (the twin's rc.py says the same) */
#define SR_SUSPECT_SPAN (2 * SR_WINDOW)
#define SR_SUSPECT_PER_SECOND 1000
#define SR_MAX_SGE 8
#define SR_RX_BATCH 64
#define SR_TX_BATCH 64
#define SR_TICK 0.02       /* the engine thread sleeps at most this long (seconds) */
#define SR_APP_GRACE 0.001 /* while the application polls, the engine leaves the socket to it this long */
#define SR_RX_SLOT 9216    /* a 4096-MTU frame is at most 4136 bytes; larger ones are counted as bad */
#define SR_GRO_SLOT 65536  /* with UDP GRO a datagram holds up to 64 KiB of back-to-back frames */
#define SR_GSO_MAX 64      /* frames in one UDP GSO send (the kernel's UDP_MAX_SEGMENTS) */
#define SR_GSO_BYTES 65000 /* and bytes: an IPv4 datagram's limit, with room for the headers */

typedef struct sr_mr {
    uint32_t lkey, rkey;
    uint64_t addr; /* the virtual address the peer names */
    uint8_t *buf;
    uint64_t len;
    int access, pd, valid;
    int refs;      /* the registration itself, and the work requests and partial writes that point here */
    void *owner;   /* the binding's handle of the memory (released by the binding, never here) */
    struct sr_dev *dev;
} sr_mr;

typedef struct { sr_mr *mr; uint64_t off; uint32_t len; } sr_sge;

typedef struct {
    uint64_t wr_id;
    int opcode, flags;
    uint64_t raddr;
    uint32_t rkey, imm;
    /* the payload is read from registered memory when each packet is built, as a NIC's DMA
     * does (the verbs contract: the buffer is the application's again after the completion) */
    int nsge;
    sr_sge sge[SR_MAX_SGE];
    uint32_t len, first_psn, npkts;
} sr_swqe;

typedef struct {
    uint64_t wr_id;
    int nsge;
    sr_sge sge[SR_MAX_SGE];
} sr_rwqe;

typedef struct {
    uint64_t wr_id;
    uint32_t byte_len, imm, qp_num, vendor_err;
    int status, opcode, has_imm;
} sr_wc;

typedef struct sr_cq {
    int id, depth, count, head, efd, signaled;
    uint64_t overruns;
    sr_wc *ring;
    pthread_mutex_t lock;
    struct sr_dev *dev;
} sr_cq;

typedef struct {
    uint64_t tx, retransmits, timeouts, rnr_naks_rx, seq_naks_rx, dup_rx, psn_out_of_window, suspect_ignored;
} sr_qpstats;

typedef struct sr_qp {
    uint32_t qpn;
    int pd, state, access;
    sr_cq *scq, *rcq;
    int max_send_wr, max_recv_wr, max_send_sge, max_recv_sge, max_inline;
    /* path */
    int have_path;
    uint32_t remote_qpn, remote_ip, mtu;
    int timeout, retry_cnt, rnr_retry, min_rnr_timer;
    /* requester */
    sr_swqe *sq;
    int sq_head, sq_count;
    uint32_t psn_tail, snd_nxt, una;
    int retry_left, rnr_left, rnr_waiting, rto_armed;
    double rto_at, rnr_at; /* 0: not armed */
    /* responder */
    sr_rwqe *rq;
    int rq_head, rq_count;
    uint32_t epsn, msn;
    int have_recv;        /* a multi-packet SEND is being placed into rq[rq_head] (already taken) */
    sr_rwqe cur_recv;
    uint32_t cur_placed;
    sr_mr *cw_mr;         /* a multi-packet WRITE is being placed */
    uint64_t cw_off, cw_left, cw_total;
    int nak_seq_sent;
    double suspect_second;
    int suspect_count;
    sr_qpstats st;
} sr_qp;

typedef struct {
    uint64_t tx_frames, rx_frames, tx_dropped, rx_dropped, icrc_errors, bad_frames, unknown_qp, internal_errors;
    uint64_t tap_dropped, tx_batches, rx_batches, tx_gso_sends, rx_gro_datagrams, psn_out_of_window, suspect_ignored;
} sr_devstats;

/* a frame held back by the delay fault */
typedef struct { double due; uint64_t seq; uint32_t dst; uint32_t len; uint8_t *data; } sr_delayed;

typedef struct { int type, port; uint32_t qpn; } sr_event;

/* one record of the frame tap ring */
typedef struct {
    uint32_t size;     /* of the whole record, 8-byte aligned */
    uint8_t dir;       /* 0 tx, 1 rx */
    uint8_t reason_len;
    uint16_t sport, dport;
    uint32_t src, dst, len;
    uint32_t orig;     /* the frame's length on the wire (len is less when the snap length cut it) */
    uint32_t _pad;
    int64_t ts_ns;
    /* then the reason text (reason_len bytes), then the frame (len bytes) */
} sr_taprec;

typedef struct sr_map { uint32_t *keys; void **vals; uint32_t cap, used; } sr_map;

typedef struct sr_dev {
    int sock, wakefd, tapfd;
    uint32_t ip;        /* network byte order */
    uint32_t mtu;       /* active MTU, bytes */
    /* UDP segmentation offload: runs of equal-size frames to one peer leave in one send and
     * arrive in one receive; each frame keeps the bytes (and the ICRC, computed for IP
     * identification 0) it has alone, so peers with or without it understand each other,
     * but a capture of the interface sees the batches (smc-trace sees every frame) */
    int gso, gro;
    volatile int running;
    int port_up;
    pthread_t thread;
    /* held from a recvmmsg to the end of its frames' processing: the engine thread and the
     * application (rx_poll) both receive, and the frames of one dequeue must not overtake
     * those of an earlier one (a responder would see a PSN gap, NAK it, and the requester
     * go back: retransmissions on a lossless loopback) */
    pthread_mutex_t rxlock;
    pthread_mutex_t lock;     /* everything below */
    sr_map qps, lkeys, rkeys;
    sr_cq **cqs;
    int ncqs, cqcap;
    /* faults */
    double loss, rx_loss, delay;
    int64_t drop_next;
    uint64_t rng;
    sr_delayed *delayed;
    int ndelayed, delcap;
    uint64_t delseq;
    double timer_hint; /* earliest armed QP timer (may be early, never late); 0 none */
    double wake_at;    /* when the engine thread wakes at the latest */
    volatile double app_polled; /* when the application's thread last took frames itself (sr_rx_poll) */
    pthread_t inline_tid;       /* the application's thread while it processes frames: no eventfd for it */
    int inline_active;
    /* ACKs the application's thread produced, held until its next transmission or the end of
     * its turn (sr_flush_acks), so they leave with the reply as TCP's delayed ACK rides on data */
    int nacks;
    uint32_t ack_dst[SR_TX_BATCH];
    uint8_t ack_hdr[SR_TX_BATCH][16];
    double acks_since;
    /* events */
    sr_event events[256];
    int nevents;
    sr_devstats st;
    char last_error[160];
    /* memory owners of deregistered regions that work requests still pointed at: the binding
     * releases them (it holds the interpreter lock, this engine never does) */
    void **zombies;
    int nzombies, zcap;
    /* tap: a byte ring of sr_taprec */
    int tap_on;
    uint32_t write_snap; /* RDMA WRITE frames keep this many bytes in the tap (0: all) */
    pthread_mutex_t taplock;
    uint8_t *tapbuf;
    size_t tapcap, taphead, taptail; /* head: next write, tail: next read (monotonic byte counts) */
    int tap_signaled;
    /* receive buffers: the engine thread's, and the application thread's (sr_rx_poll) */
    uint8_t *rxbuf, *apprxbuf;
} sr_dev;

/* lifecycle; sock is a bound, non-blocking UDP socket the device now owns */
sr_dev *sr_dev_open(int sock, uint32_t ip_be, uint32_t mtu, uint64_t seed, int gso, char *err, size_t errlen);
int sr_dev_start(sr_dev *d);
void sr_dev_close(sr_dev *d); /* stops the thread, flushes QPs; memory owners are returned by sr_dev_next_owner */
void *sr_dev_next_owner(sr_dev *d); /* after close: the memory owners still registered, one at a time */
void sr_dev_free(sr_dev *d);

/* memory: returns 0 or -errno */
int sr_reg_mr(sr_dev *d, uint32_t lkey, uint32_t rkey, uint64_t addr, uint8_t *buf, uint64_t len, int access, int pd, void *owner);
/* returns 1 and the owner to release now, 1 and NULL when work requests still point at the
 * memory (its owner comes out of sr_take_zombie later), 0 for an unknown key */
int sr_dereg_mr(sr_dev *d, uint32_t lkey, void **owner);
void *sr_take_zombie(sr_dev *d);

/* completion queues */
int sr_cq_create(sr_dev *d, int depth); /* id >= 0, or -errno */
sr_cq *sr_cq_get(sr_dev *d, int id);
int sr_cq_poll(sr_cq *cq, sr_wc *out, int max);
void sr_cq_destroy(sr_dev *d, int id);

/* queue pairs: 0 or -errno, with a message in d->last_error */
int sr_qp_create(sr_dev *d, uint32_t qpn, int pd, int scq, int rcq, int max_send_wr, int max_recv_wr, int max_send_sge,
                 int max_recv_sge, int max_inline);
int sr_qp_init(sr_dev *d, uint32_t qpn, int access);
int sr_qp_rtr(sr_dev *d, uint32_t qpn, uint32_t remote_qpn, uint32_t remote_psn, uint32_t remote_ip, uint32_t path_mtu,
              int timeout, int retry_cnt, int rnr_retry, int min_rnr_timer);
int sr_qp_rts(sr_dev *d, uint32_t qpn, uint32_t remote_qpn, uint32_t local_psn, int timeout, int retry_cnt, int rnr_retry,
              int min_rnr_timer);
int sr_qp_to_error(sr_dev *d, uint32_t qpn);
int sr_qp_destroy(sr_dev *d, uint32_t qpn);
int sr_qp_state(sr_dev *d, uint32_t qpn);
int sr_qp_stats(sr_dev *d, uint32_t qpn, sr_qpstats *out);

typedef struct { uint32_t lkey; uint64_t off; uint32_t len; } sr_sge_in;
typedef struct {
    uint64_t wr_id;
    int opcode, flags, has_imm;
    uint64_t raddr;
    uint32_t rkey, imm;
    int nsge;
    sr_sge_in sge[SR_MAX_SGE];
} sr_send_in;
typedef struct { uint64_t wr_id; int nsge; sr_sge_in sge[SR_MAX_SGE]; } sr_recv_in;

int sr_post_send(sr_dev *d, uint32_t qpn, const sr_send_in *wrs, int n);
int sr_post_recv(sr_dev *d, uint32_t qpn, const sr_recv_in *wrs, int n);

/* The application's thread takes the frames waiting on the socket and processes them
 * (its event loop saw the socket readable): one thread hand-off less per message. While it
 * keeps doing so, the engine thread stays off the socket and steps in only when the
 * application has not come for SR_APP_GRACE. Returns the frames processed. */
int sr_rx_poll(sr_dev *d, int max_rounds);
/* send the ACKs sr_rx_poll held back; returns how many */
int sr_flush_acks(sr_dev *d);

/* faults and ports */
void sr_set_port(sr_dev *d, int up);
void sr_set_gso(sr_dev *d, int on); /* send GSO batches or frame by frame (receiving takes both) */
void sr_set_faults(sr_dev *d, double loss, double rx_loss, int64_t drop_next, double delay);
void sr_reseed(sr_dev *d, uint64_t seed);
int sr_take_events(sr_dev *d, sr_event *out, int max);

/* the tap */
void sr_tap_enable(sr_dev *d, int on, uint32_t write_snap);
/* copies whole records into out (at most cap bytes); returns bytes copied */
size_t sr_tap_read(sr_dev *d, uint8_t *out, size_t cap);
size_t sr_tap_avail(sr_dev *d); /* bytes of records waiting (an upper bound of what sr_tap_read gives) */

/* CRC-32 (zlib's), folded with PCLMULQDQ on CPUs that have it (crc.c) */
uint32_t sr_crc32(uint32_t crc, const uint8_t *buf, size_t len);
int sr_crc32_selftest(void);
int sr_crc32_small(void); /* 1: pieces under 64 bytes go through the tables (they agreed with zlib) */

/* ICRC of a RoCEv2 UDP payload (BTH .. pad), little-endian as on the wire */
uint32_t sr_icrc(uint32_t src_be, uint32_t dst_be, uint16_t sport, uint16_t dport, const uint8_t *ib, size_t len);

#endif
