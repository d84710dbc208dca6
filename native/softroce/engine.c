/* The compiled soft RoCEv2 engine (see engine.h). Rules it shares with the Python twin
 * (stack/verbs/soft/rc.py, device.py) are commented with the twin's names. */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* zlib's CRC-32 (the Ethernet polynomial the ICRC uses); libz.so.1 is wherever Python's zlib is */
extern unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len);
/* the same CRC, folded with PCLMULQDQ where the CPU has it (crc.c) */
#define crc32(c, b, l) sr_crc32((c), (b), (l))

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define PSN_MASK 0xFFFFFFu
#define ROCE_PORT 4791
#define OP_ACK 0x11

static const double RNR_TIMER_MS[32] = {
    655.36, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32, 0.48, 0.64, 0.96, 1.28, 1.92,
    2.56, 3.84, 5.12, 7.68, 10.24, 15.36, 20.48, 30.72, 40.96, 61.44, 81.92, 122.88, 163.84, 245.76, 327.68, 491.52,
};

/* ------------------------------------------------------------------ small things */

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t now_wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

static inline uint32_t psn_add(uint32_t psn, int64_t n) { return (uint32_t)((int64_t)psn + n) & PSN_MASK; }

static inline int32_t psn_diff(uint32_t a, uint32_t b) { /* a - b in 24-bit serial arithmetic */
    uint32_t d = (a - b) & PSN_MASK;
    return (d & 0x800000) ? (int32_t)d - (1 << 24) : (int32_t)d;
}

static inline void put16(uint8_t *p, uint32_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put24(uint8_t *p, uint32_t v) { p[0] = v >> 16; p[1] = v >> 8; p[2] = v; }
static inline void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static inline uint32_t get24(const uint8_t *p) { return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2]; }
static inline uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

static int fail(sr_dev *d, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->last_error, sizeof d->last_error, fmt, ap);
    va_end(ap);
    return -err;
}

/* ------------------------------------------------------------------ a map of 32-bit keys (open addressing) */

static uint32_t hash32(uint32_t k) {
    k ^= k >> 16;
    k *= 0x7feb352d;
    k ^= k >> 15;
    k *= 0x846ca68b;
    return k ^ (k >> 16);
}

static void *map_get(sr_map *m, uint32_t key) {
    if (!m->cap) return NULL;
    for (uint32_t i = hash32(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->vals[i]) return NULL;
        if (m->keys[i] == key) return m->vals[i];
    }
}

static int map_put(sr_map *m, uint32_t key, void *val);

static int map_grow(sr_map *m) {
    sr_map n = {0};
    n.cap = m->cap ? m->cap * 2 : 64;
    n.keys = calloc(n.cap, sizeof *n.keys);
    n.vals = calloc(n.cap, sizeof *n.vals);
    if (!n.keys || !n.vals) {
        free(n.keys);
        free(n.vals);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < m->cap; i++)
        if (m->vals[i]) map_put(&n, m->keys[i], m->vals[i]);
    free(m->keys);
    free(m->vals);
    *m = n;
    return 0;
}

static int map_put(sr_map *m, uint32_t key, void *val) {
    if ((m->used + 1) * 2 > m->cap && map_grow(m)) return -ENOMEM;
    uint32_t i = hash32(key) & (m->cap - 1);
    while (m->vals[i] && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
    if (!m->vals[i]) m->used++;
    m->keys[i] = key;
    m->vals[i] = val;
    return 0;
}

static void map_del(sr_map *m, uint32_t key) {
    if (!m->cap) return;
    uint32_t i = hash32(key) & (m->cap - 1);
    while (m->vals[i] && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
    if (!m->vals[i]) return;
    m->vals[i] = NULL;
    m->used--;
    /* re-insert the rest of the cluster */
    for (uint32_t j = (i + 1) & (m->cap - 1); m->vals[j]; j = (j + 1) & (m->cap - 1)) {
        uint32_t k = m->keys[j];
        void *v = m->vals[j];
        m->vals[j] = NULL;
        m->used--;
        map_put(m, k, v);
    }
}

/* ------------------------------------------------------------------ ICRC (IBA annex A17; stack/wire/roce.py icrc) */

static uint32_t icrc_prefix(uint32_t src_be, uint32_t dst_be, uint16_t sport, uint16_t dport, size_t ib_len) {
    /* 8 bytes of masked LRH, the IPv4 header with TOS, TTL and checksum all ones, the UDP
     * header with its checksum all ones. IP identification 0 and DF: what the kernel
     * sends for an unconnected socket with IP_PMTUDISC_DO. */
    uint8_t b[36];
    memset(b, 0xFF, 8);
    uint8_t *ip = b + 8, *udp = b + 28;
    size_t udp_len = 8 + ib_len + 4;
    ip[0] = 0x45;
    ip[1] = 0xFF;
    put16(ip + 2, 20 + udp_len);
    put16(ip + 4, 0);
    put16(ip + 6, 0x4000);
    ip[8] = 0xFF;
    ip[9] = 17;
    ip[10] = ip[11] = 0xFF;
    memcpy(ip + 12, &src_be, 4);
    memcpy(ip + 16, &dst_be, 4);
    put16(udp, sport);
    put16(udp + 2, dport);
    put16(udp + 4, udp_len);
    udp[6] = udp[7] = 0xFF;
    return crc32(0, b, sizeof b);
}

static uint32_t icrc_continue_bth(uint32_t crc, const uint8_t *ib, size_t len) {
    uint8_t head[5];
    memcpy(head, ib, 4);
    head[4] = 0xFF; /* BTH resv8a: FECN, BECN, reserved */
    crc = crc32(crc, head, 5);
    return crc32(crc, ib + 5, len - 5);
}

uint32_t sr_icrc(uint32_t src_be, uint32_t dst_be, uint16_t sport, uint16_t dport, const uint8_t *ib, size_t len) {
    return icrc_continue_bth(icrc_prefix(src_be, dst_be, sport, dport, len), ib, len);
}

/* ------------------------------------------------------------------ the frame tap */

static int is_write_opcode(uint8_t op) { return op >= 0x06 && op <= 0x0B; }

static void tap_put(sr_dev *d, int dir, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, const uint8_t *frame,
                    size_t flen, size_t orig, const char *reason, int64_t ts);

/* how much of a frame of flen bytes starting with opcode op the tap keeps */
static size_t tap_keep(const sr_dev *d, uint8_t op, size_t flen) {
    return d->write_snap && is_write_opcode(op) && flen > d->write_snap ? d->write_snap : flen;
}

static void tap_record(sr_dev *d, int dir, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, const uint8_t *frame,
                       size_t flen, const char *reason, int64_t ts) {
    tap_put(d, dir, src, sport, dst, dport, frame, flen ? tap_keep(d, frame[0], flen) : 0, flen, reason, ts);
}

static void tap_record_cut(sr_dev *d, int dir, uint32_t src, uint32_t dst, const uint8_t *frame, size_t keep, size_t orig,
                           const char *reason, int64_t ts) {
    tap_put(d, dir, src, 4791, dst, 4791, frame, keep, orig, reason, ts);
}

/* ts: the frame's time (ns, wall clock): a frame sent is stamped before its send, since on
 * loopback the peer may take, answer and stamp it before the send call returns; 0: now */
static void tap_put(sr_dev *d, int dir, uint32_t src, uint16_t sport, uint32_t dst, uint16_t dport, const uint8_t *frame,
                    size_t flen, size_t orig, const char *reason, int64_t ts) {
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > 255) rlen = 255;
    size_t size = (sizeof(sr_taprec) + rlen + flen + 7) & ~(size_t)7;
    pthread_mutex_lock(&d->taplock);
    size_t used = d->taphead - d->taptail;
    if (!d->tap_on || used + size > d->tapcap || size > d->tapcap / 2) {
        if (d->tap_on) d->st.tap_dropped++;
        pthread_mutex_unlock(&d->taplock);
        return;
    }
    /* records never wrap: when the end of the buffer is too close, a padding record fills it */
    size_t pos = d->taphead % d->tapcap;
    if (pos + size > d->tapcap) {
        size_t pad = d->tapcap - pos;
        if (used + pad + size > d->tapcap) {
            d->st.tap_dropped++;
            pthread_mutex_unlock(&d->taplock);
            return;
        }
        sr_taprec *p = (sr_taprec *)(d->tapbuf + pos);
        memset(p, 0, sizeof *p);
        p->size = pad;
        p->dir = 255; /* padding */
        d->taphead += pad;
        pos = 0;
    }
    sr_taprec *r = (sr_taprec *)(d->tapbuf + pos);
    r->size = size;
    r->dir = dir;
    r->reason_len = rlen;
    r->sport = sport;
    r->dport = dport;
    r->src = src;
    r->dst = dst;
    r->len = flen;
    r->orig = orig;
    r->ts_ns = ts ? ts : now_wall_ns();
    uint8_t *p = (uint8_t *)(r + 1);
    memcpy(p, reason, rlen);
    if (flen) memcpy(p + rlen, frame, flen);
    int wake = d->taphead == d->taptail && !d->tap_signaled;
    d->taphead += size;
    if (wake) {
        d->tap_signaled = 1;
        uint64_t one = 1;
        ssize_t w = write(d->tapfd, &one, 8);
        (void)w;
    }
    pthread_mutex_unlock(&d->taplock);
}

void sr_tap_enable(sr_dev *d, int on, uint32_t write_snap) {
    pthread_mutex_lock(&d->taplock);
    d->write_snap = write_snap;
    if (on && !d->tapbuf) {
        d->tapcap = 32u << 20;
        d->tapbuf = malloc(d->tapcap);
        if (!d->tapbuf) on = 0;
    }
    d->tap_on = on;
    pthread_mutex_unlock(&d->taplock);
}

size_t sr_tap_avail(sr_dev *d) {
    pthread_mutex_lock(&d->taplock);
    size_t n = d->taphead - d->taptail;
    pthread_mutex_unlock(&d->taplock);
    return n;
}

/* One reader at a time (the Python side holds its tap lock). The records between tail and
 * head stay where they are until the tail moves past them, so they are copied without the
 * lock: the NIC's tap_put is never held up by a reader's copy of megabytes. */
size_t sr_tap_read(sr_dev *d, uint8_t *out, size_t cap) {
    size_t done = 0;
    pthread_mutex_lock(&d->taplock);
    size_t tail = d->taptail, head = d->taphead;
    pthread_mutex_unlock(&d->taplock);
    while (tail < head) {
        sr_taprec *r = (sr_taprec *)(d->tapbuf + tail % d->tapcap);
        if (r->dir == 255) {
            tail += r->size;
            continue;
        }
        if (done + r->size > cap) break;
        memcpy(out + done, r, r->size);
        done += r->size;
        tail += r->size;
    }
    pthread_mutex_lock(&d->taplock);
    d->taptail = tail;
    if (d->taptail == d->taphead && d->tap_signaled) {
        uint64_t v;
        ssize_t n = read(d->tapfd, &v, 8);
        (void)n;
        d->tap_signaled = 0;
    }
    pthread_mutex_unlock(&d->taplock);
    return done;
}

/* ------------------------------------------------------------------ completions and events */

static void post_event(sr_dev *d, int type, int port, uint32_t qpn) {
    if (d->nevents < (int)(sizeof d->events / sizeof d->events[0])) d->events[d->nevents++] = (sr_event){type, port, qpn};
}

static void cq_push(sr_cq *cq, const sr_wc *wc) {
    pthread_mutex_lock(&cq->lock);
    if (cq->count >= cq->depth) {
        cq->overruns++;
        pthread_mutex_unlock(&cq->lock);
        post_event(cq->dev, EV_CQ_ERR, 0, 0);
        return;
    }
    cq->ring[(cq->head + cq->count) % cq->depth] = *wc;
    cq->count++;
    sr_dev *d = cq->dev;
    if (!cq->signaled && !(d->inline_active && pthread_equal(pthread_self(), d->inline_tid))) {
        cq->signaled = 1;
        uint64_t one = 1;
        ssize_t w = write(cq->efd, &one, 8);
        (void)w;
    }
    pthread_mutex_unlock(&cq->lock);
}

static void cqe(sr_qp *qp, sr_cq *cq, uint64_t wr_id, int status, int opcode, uint32_t byte_len, int has_imm, uint32_t imm) {
    sr_wc wc = {wr_id, byte_len, imm, qp->qpn, status == WC_SUCCESS ? 0 : 0x100 + (uint32_t)status, status, opcode, has_imm};
    cq_push(cq, &wc);
}

int sr_cq_create(sr_dev *d, int depth) {
    if (depth <= 0) return fail(d, EINVAL, "create_cq: depth %d must be positive", depth);
    sr_cq *cq = calloc(1, sizeof *cq);
    if (!cq) return -ENOMEM;
    cq->ring = calloc(depth, sizeof *cq->ring);
    cq->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!cq->ring || cq->efd < 0) {
        free(cq->ring);
        if (cq->efd >= 0) close(cq->efd);
        free(cq);
        return -ENOMEM;
    }
    cq->depth = depth;
    cq->dev = d;
    pthread_mutex_init(&cq->lock, NULL);
    pthread_mutex_lock(&d->lock);
    if (d->ncqs == d->cqcap) {
        int cap = d->cqcap ? d->cqcap * 2 : 8;
        sr_cq **n = realloc(d->cqs, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&d->lock);
            close(cq->efd);
            free(cq->ring);
            free(cq);
            return -ENOMEM;
        }
        d->cqs = n;
        d->cqcap = cap;
    }
    cq->id = d->ncqs;
    d->cqs[d->ncqs++] = cq;
    pthread_mutex_unlock(&d->lock);
    return cq->id;
}

sr_cq *sr_cq_get(sr_dev *d, int id) { return id >= 0 && id < d->ncqs ? d->cqs[id] : NULL; }

int sr_cq_poll(sr_cq *cq, sr_wc *out, int max) {
    pthread_mutex_lock(&cq->lock);
    int n = 0;
    while (n < max && cq->count) {
        out[n++] = cq->ring[cq->head];
        cq->head = (cq->head + 1) % cq->depth;
        cq->count--;
    }
    if (!cq->count && cq->signaled) {
        uint64_t v;
        ssize_t r = read(cq->efd, &v, 8);
        (void)r;
        cq->signaled = 0;
    }
    pthread_mutex_unlock(&cq->lock);
    return n;
}

void sr_cq_destroy(sr_dev *d, int id) {
    sr_cq *cq = sr_cq_get(d, id);
    if (cq && cq->efd >= 0) {
        close(cq->efd);
        cq->efd = -1;
    }
}

int sr_take_events(sr_dev *d, sr_event *out, int max) {
    pthread_mutex_lock(&d->lock);
    int n = d->nevents < max ? d->nevents : max;
    memcpy(out, d->events, n * sizeof *out);
    memmove(d->events, d->events + n, (d->nevents - n) * sizeof *out);
    d->nevents -= n;
    pthread_mutex_unlock(&d->lock);
    return n;
}

/* ------------------------------------------------------------------ memory */

static void mr_unref(sr_mr *mr) {
    if (!mr || --mr->refs) return;
    if (mr->owner) { /* deregistered while work requests pointed here: the binding frees the memory */
        sr_dev *d = mr->dev;
        if (d->nzombies == d->zcap) {
            int cap = d->zcap ? d->zcap * 2 : 16;
            void **n = realloc(d->zombies, cap * sizeof *n);
            if (n) {
                d->zombies = n;
                d->zcap = cap;
            }
        }
        if (d->nzombies < d->zcap) d->zombies[d->nzombies++] = mr->owner;
    }
    free(mr);
}

void *sr_take_zombie(sr_dev *d) {
    pthread_mutex_lock(&d->lock);
    void *o = d->nzombies ? d->zombies[--d->nzombies] : NULL;
    pthread_mutex_unlock(&d->lock);
    return o;
}

int sr_reg_mr(sr_dev *d, uint32_t lkey, uint32_t rkey, uint64_t addr, uint8_t *buf, uint64_t len, int access, int pd, void *owner) {
    sr_mr *mr = calloc(1, sizeof *mr);
    if (!mr) return -ENOMEM;
    *mr = (sr_mr){lkey, rkey, addr, buf, len, access, pd, 1, 1, owner, d};
    pthread_mutex_lock(&d->lock);
    if (map_get(&d->lkeys, lkey) || map_get(&d->rkeys, rkey)) {
        pthread_mutex_unlock(&d->lock);
        free(mr);
        return fail(d, EEXIST, "reg_mr: key 0x%x or 0x%x is in use", lkey, rkey);
    }
    int rc = map_put(&d->lkeys, lkey, mr);
    if (!rc) rc = map_put(&d->rkeys, rkey, mr);
    pthread_mutex_unlock(&d->lock);
    if (rc) free(mr);
    return rc;
}

int sr_dereg_mr(sr_dev *d, uint32_t lkey, void **owner) {
    pthread_mutex_lock(&d->lock);
    sr_mr *mr = map_get(&d->lkeys, lkey);
    int found = 0;
    *owner = NULL;
    if (mr && mr->valid) {
        found = 1;
        mr->valid = 0;
        map_del(&d->lkeys, mr->lkey);
        map_del(&d->rkeys, mr->rkey);
        if (mr->refs == 1) { /* nothing points here: the memory can go now */
            *owner = mr->owner;
            mr->owner = NULL;
        }
        mr_unref(mr);
    }
    pthread_mutex_unlock(&d->lock);
    return found;
}

/* ------------------------------------------------------------------ transmitting: a batch of frames per sendmmsg */

#define TX_IOV (2 + SR_MAX_SGE) /* headers, the payload's pieces, pad and ICRC */

typedef struct {
    sr_dev *d;
    int n;
    int hold_acks; /* the application's receive turn: ACKs wait in d->ack_* */
    int64_t ts;    /* when the batch's send began (the tap's time of its frames) */
    struct mmsghdr msg[SR_TX_BATCH];
    struct iovec iov[SR_TX_BATCH][TX_IOV];
    struct sockaddr_in to[SR_TX_BATCH];
    uint8_t hdr[SR_TX_BATCH][32];
    uint8_t tail[SR_TX_BATCH][8];
} txbatch;

/* a frame's parts as the tap stores them: one contiguous copy of what it keeps */
static void tap_iov(sr_dev *d, int dir, uint32_t src, uint32_t dst, const struct iovec *iov, int n, const char *reason, int64_t ts) {
    uint8_t stack[4608], *buf = stack;
    stack[0] = 0;
    size_t orig = 0;
    for (int i = 0; i < n; i++) orig += iov[i].iov_len;
    size_t keep = n && iov[0].iov_len ? tap_keep(d, ((const uint8_t *)iov[0].iov_base)[0], orig) : orig;
    if (keep > sizeof stack && !(buf = malloc(keep))) return;
    size_t pos = 0;
    for (int i = 0; i < n && pos < keep; i++) {
        size_t take = iov[i].iov_len < keep - pos ? iov[i].iov_len : keep - pos;
        if (take) memcpy(buf + pos, iov[i].iov_base, take);
        pos += take;
    }
    tap_record_cut(d, dir, src, dst, buf, keep, orig, reason, ts);
    if (buf != stack) free(buf);
}

static size_t frame_len(const struct mmsghdr *m) {
    size_t n = 0;
    for (size_t i = 0; i < m->msg_hdr.msg_iovlen; i++) n += m->msg_hdr.msg_iov[i].iov_len;
    return n;
}

static void tx_done(sr_dev *d, txbatch *b, int first, int count, int err) {
    char why[96];
    if (err) snprintf(why, sizeof why, "send failed: %s", strerror(err));
    for (int i = first; i < first + count; i++) {
        if (err)
            d->st.tx_dropped++;
        else
            d->st.tx_frames++;
        if (d->tap_on) tap_iov(d, 0, d->ip, b->to[i].sin_addr.s_addr, b->iov[i], (int)b->msg[i].msg_hdr.msg_iovlen, err ? why : NULL, b->ts);
    }
}

/* one sendmmsg per batch; a frame that cannot go is lost on the wire, as the twin's sendto error */
static void tx_flush_plain(txbatch *b) {
    sr_dev *d = b->d;
    int done = 0;
    while (done < b->n) {
        int r = sendmmsg(d->sock, b->msg + done, b->n - done, MSG_DONTWAIT);
        int err = r < 0 ? errno : 0;
        if (r < 0 && err == EINTR) continue;
        if (r <= 0) {
            tx_done(d, b, done, 1, err ? err : EIO);
            done++;
            continue;
        }
        tx_done(d, b, done, r, 0);
        done += r;
    }
}

/* runs of frames to one peer, all of one size but the last (which may be shorter), leave as
 * one UDP GSO datagram each; the kernel cuts them apart again wherever it must */
static void tx_flush_gso(txbatch *b) {
    sr_dev *d = b->d;
    struct mmsghdr out[SR_TX_BATCH];
    struct iovec iov[SR_TX_BATCH * TX_IOV];
    union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } ctl[SR_TX_BATCH];
    int first[SR_TX_BATCH], count[SR_TX_BATCH];
    int ng = 0, niov = 0;
    for (int i = 0; i < b->n;) {
        size_t seg = frame_len(&b->msg[i]), total = seg;
        int k = 1;
        while (i + k < b->n && k < SR_GSO_MAX && b->to[i + k].sin_addr.s_addr == b->to[i].sin_addr.s_addr) {
            size_t len = frame_len(&b->msg[i + k]);
            if (len > seg || total + len > SR_GSO_BYTES) break;
            total += len;
            k++;
            if (len < seg) break; /* a shorter one ends the run */
        }
        struct msghdr *h = &out[ng].msg_hdr;
        memset(&out[ng], 0, sizeof out[ng]);
        h->msg_name = &b->to[i];
        h->msg_namelen = sizeof b->to[i];
        h->msg_iov = &iov[niov];
        for (int j = i; j < i + k; j++)
            for (size_t v = 0; v < b->msg[j].msg_hdr.msg_iovlen; v++) iov[niov++] = b->msg[j].msg_hdr.msg_iov[v];
        h->msg_iovlen = &iov[niov] - h->msg_iov;
        if (k > 1) {
            h->msg_control = ctl[ng].buf;
            h->msg_controllen = sizeof ctl[ng].buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t gso = (uint16_t)seg;
            memcpy(CMSG_DATA(c), &gso, sizeof gso);
            d->st.tx_gso_sends++;
        }
        first[ng] = i;
        count[ng] = k;
        ng++;
        i += k;
    }
    int done = 0;
    while (done < ng) {
        int r = sendmmsg(d->sock, out + done, ng - done, MSG_DONTWAIT);
        int err = r < 0 ? errno : 0;
        if (r < 0 && err == EINTR) continue;
        if (r <= 0) {
            tx_done(d, b, first[done], count[done], err ? err : EIO);
            done++;
            continue;
        }
        for (int g = done; g < done + r; g++) tx_done(d, b, first[g], count[g], 0);
        done += r;
    }
}

static void tx_flush(txbatch *b) {
    b->ts = b->d->tap_on ? now_wall_ns() : 0;
    if (b->d->gso && b->n > 1)
        tx_flush_gso(b);
    else
        tx_flush_plain(b);
    b->d->st.tx_batches++;
    b->n = 0;
}

static void delay_push(sr_dev *d, double due, uint32_t dst, const uint8_t *frame, uint32_t len);

/* The twin's SoftDevice._send: port, drop-next, loss, delay, then the wire. The payload
 * comes in pieces (registered memory, read in place). */
static void emitv(txbatch *b, uint32_t dst, const uint8_t *hdr, size_t hlen, const struct iovec *pay, int npay) {
    sr_dev *d = b->d;
    size_t plen = 0;
    for (int i = 0; i < npay; i++) plen += pay[i].iov_len;
    size_t pad = (4 - plen % 4) % 4;
    uint8_t tail[8] = {0};
    uint32_t crc = icrc_prefix(d->ip, dst, ROCE_PORT, ROCE_PORT, hlen + plen + pad);
    crc = icrc_continue_bth(crc, hdr, hlen);
    for (int i = 0; i < npay; i++)
        if (pay[i].iov_len) crc = crc32(crc, pay[i].iov_base, pay[i].iov_len);
    if (pad) crc = crc32(crc, tail, pad);
    tail[pad] = crc;
    tail[pad + 1] = crc >> 8;
    tail[pad + 2] = crc >> 16;
    tail[pad + 3] = crc >> 24;
    size_t tlen = pad + 4;
    struct iovec parts[TX_IOV];
    int nparts = 0;
    parts[nparts++] = (struct iovec){(void *)hdr, hlen};
    for (int i = 0; i < npay; i++)
        if (pay[i].iov_len) parts[nparts++] = pay[i];
    parts[nparts++] = (struct iovec){tail, tlen};
    const char *reason = NULL;
    if (!d->port_up)
        reason = "port down";
    else if (d->drop_next > 0) {
        d->drop_next--;
        reason = "drop-next";
    } else if (d->loss > 0 && rng_unit(&d->rng) < d->loss)
        reason = "loss";
    else if (d->delay > 0) {
        size_t flen = hlen + plen + tlen, pos = 0;
        uint8_t *f = malloc(flen);
        if (f) {
            for (int i = 0; i < nparts; i++) {
                memcpy(f + pos, parts[i].iov_base, parts[i].iov_len);
                pos += parts[i].iov_len;
            }
            delay_push(d, now_mono() + d->delay, dst, f, flen);
            return;
        }
        reason = "send failed: out of memory";
    }
    if (reason) {
        d->st.tx_dropped++;
        if (d->tap_on) tap_iov(d, 0, d->ip, dst, parts, nparts, reason, 0);
        return;
    }
    if (b->n == SR_TX_BATCH) tx_flush(b);
    int i = b->n++;
    memcpy(b->hdr[i], hdr, hlen);
    memcpy(b->tail[i], tail, tlen);
    b->to[i] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(ROCE_PORT), .sin_addr.s_addr = dst};
    for (int k = 0; k < nparts; k++) b->iov[i][k] = parts[k];
    b->iov[i][0].iov_base = b->hdr[i];
    b->iov[i][nparts - 1].iov_base = b->tail[i];
    memset(&b->msg[i], 0, sizeof b->msg[i]);
    b->msg[i].msg_hdr.msg_name = &b->to[i];
    b->msg[i].msg_hdr.msg_namelen = sizeof b->to[i];
    b->msg[i].msg_hdr.msg_iov = b->iov[i];
    b->msg[i].msg_hdr.msg_iovlen = nparts;
    /* the payload is registered memory a completion may hand back: send before the lock goes */
}

static void emit(txbatch *b, uint32_t dst, const uint8_t *hdr, size_t hlen, const uint8_t *payload, size_t plen) {
    struct iovec one = {(void *)payload, plen};
    emitv(b, dst, hdr, hlen, &one, plen ? 1 : 0);
}

/* ------------------------------------------------------------------ the delay fault: a heap by due time */

static void delay_push(sr_dev *d, double due, uint32_t dst, const uint8_t *frame, uint32_t len) {
    if (d->ndelayed == d->delcap) {
        int cap = d->delcap ? d->delcap * 2 : 64;
        sr_delayed *n = realloc(d->delayed, cap * sizeof *n);
        if (!n) {
            free((void *)frame);
            d->st.tx_dropped++;
            return;
        }
        d->delayed = n;
        d->delcap = cap;
    }
    sr_delayed e = {due, d->delseq++, dst, len, (uint8_t *)frame};
    int i = d->ndelayed++;
    while (i > 0) {
        int p = (i - 1) / 2;
        sr_delayed *q = &d->delayed[p];
        if (q->due < e.due || (q->due == e.due && q->seq < e.seq)) break;
        d->delayed[i] = *q;
        i = p;
    }
    d->delayed[i] = e;
    if (due < d->wake_at && !pthread_equal(pthread_self(), d->thread)) {
        uint64_t one = 1;
        ssize_t w = write(d->wakefd, &one, 8);
        (void)w;
    }
}

static sr_delayed delay_pop(sr_dev *d) {
    sr_delayed top = d->delayed[0], last = d->delayed[--d->ndelayed];
    int i = 0, n = d->ndelayed;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && (d->delayed[c + 1].due < d->delayed[c].due ||
                          (d->delayed[c + 1].due == d->delayed[c].due && d->delayed[c + 1].seq < d->delayed[c].seq)))
            c++;
        if (last.due < d->delayed[c].due || (last.due == d->delayed[c].due && last.seq < d->delayed[c].seq)) break;
        d->delayed[i] = d->delayed[c];
        i = c;
    }
    if (n) d->delayed[i] = last;
    return top;
}

static void send_delayed(sr_dev *d, double now) {
    while (d->ndelayed && d->delayed[0].due <= now) {
        sr_delayed e = delay_pop(d);
        const char *reason = d->port_up ? NULL : "port down";
        char why[96];
        int64_t ts = d->tap_on ? now_wall_ns() : 0;
        if (!reason) {
            struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(ROCE_PORT), .sin_addr.s_addr = e.dst};
            if (sendto(d->sock, e.data, e.len, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to) < 0) {
                snprintf(why, sizeof why, "send failed: %s", strerror(errno));
                reason = why;
            }
        }
        if (reason)
            d->st.tx_dropped++;
        else
            d->st.tx_frames++;
        if (d->tap_on) tap_record(d, 0, d->ip, ROCE_PORT, e.dst, ROCE_PORT, e.data, e.len, reason, ts);
        free(e.data);
    }
}

/* ------------------------------------------------------------------ QP timers */

static double local_ack_timeout(int timeout) { return timeout == 0 ? INFINITY : 4.096e-6 * (double)(1ull << timeout); }

static void wake_engine(sr_dev *d) {
    if (!pthread_equal(pthread_self(), d->thread)) {
        uint64_t one = 1;
        ssize_t w = write(d->wakefd, &one, 8);
        (void)w;
    }
}

static void hint_timer(sr_dev *d, double at) {
    if (d->timer_hint == 0 || at < d->timer_hint) d->timer_hint = at;
    /* the engine sleeps at most SR_TICK: only a deadline before its planned wake-up needs a
     * kick (an RNR timer, never the 134 ms ACK timeout that every send re-arms) */
    if (at < d->wake_at) wake_engine(d);
}

static void arm_rto(sr_dev *d, sr_qp *qp, double now) {
    /* the local ACK timer measures from the last progress, not the last send */
    qp->rto_armed = 1;
    double t = local_ack_timeout(qp->timeout);
    qp->rto_at = isinf(t) ? 0 : now + t;
    if (qp->rto_at) hint_timer(d, qp->rto_at);
}

static void cancel_rto(sr_qp *qp) {
    qp->rto_armed = 0;
    qp->rto_at = 0;
}

/* ------------------------------------------------------------------ QP: errors and completions */

static sr_swqe *sq_at(sr_qp *qp, int i) { return &qp->sq[(qp->sq_head + i) % qp->max_send_wr]; }

static int wc_op(int opcode) { return opcode == WR_SEND || opcode == WR_SEND_WITH_IMM ? WCO_SEND : WCO_RDMA_WRITE; }

static void swqe_free(sr_swqe *e) {
    for (int i = 0; i < e->nsge; i++) mr_unref(e->sge[i].mr);
    e->nsge = 0;
}

static void rwqe_release(sr_rwqe *w) {
    for (int i = 0; i < w->nsge; i++) mr_unref(w->sge[i].mr);
    w->nsge = 0;
}

static void sq_pop(sr_qp *qp) {
    swqe_free(sq_at(qp, 0));
    qp->sq_head = (qp->sq_head + 1) % qp->max_send_wr;
    qp->sq_count--;
}

static void enter_error(sr_dev *d, sr_qp *qp) {
    (void)d;
    if (qp->state == QPS_ERR) return;
    qp->state = QPS_ERR;
    cancel_rto(qp);
    qp->rnr_at = 0;
    qp->rnr_waiting = 0;
    while (qp->sq_count) {
        sr_swqe *e = sq_at(qp, 0);
        cqe(qp, qp->scq, e->wr_id, WC_WR_FLUSH_ERR, wc_op(e->opcode), 0, 0, 0);
        sq_pop(qp);
    }
    if (qp->have_recv) {
        cqe(qp, qp->rcq, qp->cur_recv.wr_id, WC_WR_FLUSH_ERR, WCO_RECV, 0, 0, 0);
        rwqe_release(&qp->cur_recv);
        qp->have_recv = 0;
    }
    if (qp->cw_mr) {
        mr_unref(qp->cw_mr);
        qp->cw_mr = NULL;
    }
    while (qp->rq_count) {
        sr_rwqe *w = &qp->rq[qp->rq_head];
        cqe(qp, qp->rcq, w->wr_id, WC_WR_FLUSH_ERR, WCO_RECV, 0, 0, 0);
        rwqe_release(w);
        qp->rq_head = (qp->rq_head + 1) % qp->max_recv_wr;
        qp->rq_count--;
    }
}

/* ------------------------------------------------------------------ QP: requester */

static void flush_held_acks(txbatch *b) {
    sr_dev *d = b->d;
    int n = d->nacks;
    d->nacks = 0;
    for (int i = 0; i < n; i++) emit(b, d->ack_dst[i], d->ack_hdr[i], 16, NULL, 0);
}

static void send_ack(txbatch *b, sr_qp *qp, uint32_t psn, uint32_t syndrome) {
    uint8_t h[16] = {0};
    h[0] = OP_ACK;
    h[2] = h[3] = 0xFF;
    put24(h + 5, qp->remote_qpn);
    put24(h + 9, psn);
    put32(h + 12, syndrome << 24 | qp->msn);
    sr_dev *d = b->d;
    if (b->hold_acks && (syndrome >> 5) == 0) { /* a plain ACK: it may wait for the reply; NAKs go at once */
        if (d->nacks == SR_TX_BATCH) flush_held_acks(b);
        if (!d->nacks) d->acks_since = now_mono();
        d->ack_dst[d->nacks] = qp->remote_ip;
        memcpy(d->ack_hdr[d->nacks], h, 16);
        d->nacks++;
        return;
    }
    emit(b, qp->remote_ip, h, 16, NULL, 0);
}

/* the twin's _SEND_OPS: (kind, position) -> BTH opcode */
static int data_opcode(int wr_op, int npkts, int index) {
    int only = npkts == 1, first = index == 0, last = index == npkts - 1;
    switch (wr_op) {
    case WR_SEND: return only ? 0x04 : first ? 0x00 : last ? 0x02 : 0x01;
    case WR_SEND_WITH_IMM: return only ? 0x05 : first ? 0x00 : last ? 0x03 : 0x01;
    case WR_RDMA_WRITE: return only ? 0x0A : first ? 0x06 : last ? 0x08 : 0x07;
    default: return only ? 0x0B : first ? 0x06 : last ? 0x09 : 0x07; /* WRITE_WITH_IMM */
    }
}

static void transmit_packet(txbatch *b, sr_qp *qp, sr_swqe *e, uint32_t index) {
    int op = data_opcode(e->opcode, e->npkts, index);
    int last = index == e->npkts - 1;
    uint64_t off = (uint64_t)index * qp->mtu;
    uint32_t plen = e->len - off < qp->mtu ? (uint32_t)(e->len - off) : qp->mtu;
    if (e->len == 0) plen = 0;
    int is_send = e->opcode == WR_SEND || e->opcode == WR_SEND_WITH_IMM;
    uint8_t h[32] = {0};
    size_t hl = 12;
    h[0] = op;
    h[1] = (last && is_send && (e->flags & SF_SOLICITED) ? 0x80 : 0) | (((4 - plen % 4) % 4) << 4);
    h[2] = h[3] = 0xFF;
    put24(h + 5, qp->remote_qpn);
    h[8] = last || index % SR_ACK_EVERY == SR_ACK_EVERY - 1 ? 0x80 : 0;
    put24(h + 9, psn_add(e->first_psn, index));
    if (op == 0x06 || op == 0x0A || op == 0x0B) { /* RETH on the first packet of a WRITE */
        for (int i = 0; i < 8; i++) h[hl + i] = e->raddr >> (56 - 8 * i);
        put32(h + hl + 8, e->rkey);
        put32(h + hl + 12, e->len);
        hl += 16;
    }
    if (op == 0x03 || op == 0x05 || op == 0x09 || op == 0x0B) {
        put32(h + hl, e->imm);
        hl += 4;
    }
    qp->st.tx++;
    struct iovec pay[SR_MAX_SGE];
    int np = 0;
    uint64_t pos = 0, want = plen;
    for (int i = 0; i < e->nsge && want; i++) { /* the packet's bytes [off, off + plen) across the SGEs */
        sr_sge *g = &e->sge[i];
        if (pos + g->len <= off) {
            pos += g->len;
            continue;
        }
        uint64_t start = off > pos ? off - pos : 0;
        uint64_t take = g->len - start < want ? g->len - start : want;
        pay[np++] = (struct iovec){g->mr->buf + g->off + start, take};
        want -= take;
        off += take;
        pos += g->len;
    }
    emitv(b, qp->remote_ip, h, hl, pay, np);
}

static int entry_for(sr_qp *qp, uint32_t psn) {
    for (int i = 0; i < qp->sq_count; i++) {
        sr_swqe *e = sq_at(qp, i);
        int32_t d = psn_diff(psn, e->first_psn);
        if (d >= 0 && (uint32_t)d < e->npkts) return i;
    }
    return -1;
}

static void pump(txbatch *b, sr_qp *qp, double now) {
    /* send what the window allows, starting at snd_nxt */
    if (qp->state != QPS_RTS || qp->rnr_waiting) return;
    int sent = 0, idx = -1;
    sr_swqe *e = NULL;
    while (qp->snd_nxt != qp->psn_tail && psn_diff(qp->snd_nxt, qp->una) < SR_WINDOW) {
        if (!e || !(psn_diff(qp->snd_nxt, e->first_psn) >= 0 && (uint32_t)psn_diff(qp->snd_nxt, e->first_psn) < e->npkts)) {
            idx = entry_for(qp, qp->snd_nxt);
            if (idx < 0) break;
            e = sq_at(qp, idx);
        }
        transmit_packet(b, qp, e, psn_diff(qp->snd_nxt, e->first_psn));
        qp->snd_nxt = psn_add(qp->snd_nxt, 1);
        sent = 1;
    }
    if (sent && !qp->rto_armed) arm_rto(b->d, qp, now);
}

static void acked_through(sr_qp *qp, uint32_t psn, double now, sr_dev *d) {
    /* everything up to and including psn arrived: complete finished WRs */
    if (psn_diff(psn, qp->una) < 0) return;
    qp->una = psn_add(psn, 1);
    qp->retry_left = qp->retry_cnt;
    qp->rnr_left = qp->rnr_retry;
    while (qp->sq_count) {
        sr_swqe *e = sq_at(qp, 0);
        if (psn_diff(psn_add(e->first_psn, e->npkts - 1), psn) > 0) break;
        if (e->flags & SF_SIGNALED) cqe(qp, qp->scq, e->wr_id, WC_SUCCESS, wc_op(e->opcode), e->len, 0, 0);
        sq_pop(qp);
    }
    if (qp->una == qp->psn_tail)
        cancel_rto(qp);
    else
        arm_rto(d, qp, now);
}

static void fail_at(sr_dev *d, sr_qp *qp, uint32_t psn, int status) {
    int i = entry_for(qp, psn);
    if (i >= 0) {
        for (int k = 0; k < i; k++) sq_pop(qp); /* defensive: earlier entries were acknowledged by the NAK */
        sr_swqe *e = sq_at(qp, 0);
        cqe(qp, qp->scq, e->wr_id, status, wc_op(e->opcode), 0, 0, 0);
        sq_pop(qp);
    }
    enter_error(d, qp);
}

static int nak_status(int code) {
    switch (code) {
    case 1: return WC_REM_INV_REQ_ERR;
    case 2: return WC_REM_ACCESS_ERR;
    case 3: return WC_REM_OP_ERR;
    case 4: return WC_REM_INV_REQ_ERR;
    default: return WC_REM_OP_ERR;
    }
}

/* a frame whose PSN no honest peer sends: count it; 1 while it may still be examined */
static int suspect(sr_dev *d, sr_qp *qp, double now) {
    if (now - qp->suspect_second >= 1.0) {
        qp->suspect_second = now;
        qp->suspect_count = 0;
    }
    if (++qp->suspect_count > SR_SUSPECT_PER_SECOND) {
        qp->st.suspect_ignored++;
        d->st.suspect_ignored++;
        return 0;
    }
    qp->st.psn_out_of_window++;
    d->st.psn_out_of_window++;
    return 1;
}

static void on_ack(txbatch *b, sr_qp *qp, uint32_t psn, uint32_t syndrome, double now) {
    sr_dev *d = b->d;
    if (qp->state != QPS_RTS) return;
    /* an ACK or NAK only means something for PSNs we have sent */
    if (psn_diff(psn, qp->una) < -1 || psn_diff(psn, qp->psn_tail) >= 0) {
        int32_t far = psn_diff(psn, qp->una);
        if (far > SR_SUSPECT_SPAN || far < -SR_SUSPECT_SPAN) suspect(d, qp, now);
        return;
    }
    int kind = syndrome >> 5, value = syndrome & 0x1F;
    if (kind == 0) {
        acked_through(qp, psn, now, d);
        if (psn_diff(qp->snd_nxt, qp->una) < 0) qp->snd_nxt = qp->una;
        pump(b, qp, now);
        return;
    }
    acked_through(qp, psn_add(psn, -1), now, d); /* a NAK acknowledges everything before it */
    if (kind == 1) { /* RNR NAK */
        qp->st.rnr_naks_rx++;
        if (qp->rnr_left == 0) {
            fail_at(d, qp, psn, WC_RNR_RETRY_EXC_ERR);
            return;
        }
        if (qp->rnr_retry != 7) qp->rnr_left--;
        qp->snd_nxt = psn;
        qp->rnr_waiting = 1;
        cancel_rto(qp);
        qp->rnr_at = now + RNR_TIMER_MS[value] / 1000;
        hint_timer(d, qp->rnr_at);
    } else if (kind == 3 && value == 0) { /* PSN sequence error */
        qp->st.seq_naks_rx++;
        if (qp->rnr_waiting && psn == qp->snd_nxt) return; /* the followers of an RNR-NAKed packet */
        if (qp->retry_left == 0) {
            fail_at(d, qp, psn, WC_RETRY_EXC_ERR);
            return;
        }
        qp->retry_left--;
        qp->snd_nxt = psn;
        qp->st.retransmits++;
        pump(b, qp, now);
    } else if (kind == 3) {
        fail_at(d, qp, psn, nak_status(value));
    }
}

static void on_timer(txbatch *b, sr_qp *qp, int rnr, double now) {
    if (qp->state != QPS_RTS) return;
    if (rnr) {
        qp->rnr_waiting = 0;
        pump(b, qp, now);
        return;
    }
    qp->rto_armed = 0;
    if (qp->una != qp->psn_tail) {
        qp->st.timeouts++;
        if (qp->retry_left == 0) {
            fail_at(b->d, qp, qp->una, WC_RETRY_EXC_ERR);
            return;
        }
        qp->retry_left--;
        qp->snd_nxt = qp->una;
        qp->st.retransmits++;
        pump(b, qp, now);
    }
}

/* ------------------------------------------------------------------ QP: responder */

typedef struct {
    int opcode, ackreq;
    uint32_t psn;
    int has_reth, has_imm;
    uint64_t vaddr;
    uint32_t rkey, dma_len, imm;
    const uint8_t *payload;
    uint32_t plen;
} rxpkt;

static int responder_error(txbatch *b, sr_qp *qp, int nak, int event) {
    /* the requester broke a rule: this QP goes to ERR as rxe and hardware do, then NAKs */
    enter_error(b->d, qp);
    post_event(b->d, event, 0, qp->qpn);
    send_ack(b, qp, qp->epsn, 3u << 5 | (uint32_t)nak);
    return 0;
}

static int rnr_nak(txbatch *b, sr_qp *qp, uint32_t psn) {
    send_ack(b, qp, psn, 1u << 5 | (uint32_t)qp->min_rnr_timer);
    qp->nak_seq_sent = 1; /* the packets behind it are dropped quietly until it comes again */
    return -1;
}

static int scatter(sr_rwqe *w, uint32_t placed, const uint8_t *data, uint32_t len) {
    uint64_t capacity = 0;
    for (int i = 0; i < w->nsge; i++) capacity += w->sge[i].len;
    if ((uint64_t)placed + len > capacity) return 0;
    uint64_t pos = 0, src = 0;
    for (int i = 0; i < w->nsge && src < len; i++) {
        sr_sge *s = &w->sge[i];
        if (pos + s->len <= placed) {
            pos += s->len;
            continue;
        }
        uint64_t start = placed > pos ? placed - pos : 0;
        uint64_t n = s->len - start < len - src ? s->len - start : len - src;
        if (!s->mr || !s->mr->valid || s->off + start + n > s->mr->len) return 0;
        memcpy(s->mr->buf + s->off + start, data + src, n);
        src += n;
        pos += s->len;
    }
    return 1;
}

static int is_send_first(int op) { return op == 0x00 || op == 0x04 || op == 0x05; }
static int is_send_cont(int op) { return op == 0x01 || op == 0x02 || op == 0x03; }
static int is_send_end(int op) { return op == 0x04 || op == 0x05 || op == 0x02 || op == 0x03; }
static int is_write_first(int op) { return op == 0x06 || op == 0x0A || op == 0x0B; }
static int is_write_cont(int op) { return op == 0x07 || op == 0x08 || op == 0x09; }
static int is_write_end(int op) { return op == 0x0A || op == 0x0B || op == 0x08 || op == 0x09; }
static int with_imm(int op) { return op == 0x03 || op == 0x05 || op == 0x09 || op == 0x0B; }

/* 1 placed, 0 error (NAK sent), -1 RNR NAK sent */
static int on_send(txbatch *b, sr_qp *qp, const rxpkt *p) {
    if (is_send_first(p->opcode)) {
        if (qp->have_recv) return responder_error(b, qp, 1, EV_QP_REQ_ERR);
        if (!qp->rq_count) return rnr_nak(b, qp, p->psn);
        qp->cur_recv = qp->rq[qp->rq_head]; /* its MR references move with it */
        qp->rq_head = (qp->rq_head + 1) % qp->max_recv_wr;
        qp->rq_count--;
        qp->have_recv = 1;
        qp->cur_placed = 0;
    } else if (!qp->have_recv)
        return responder_error(b, qp, 1, EV_QP_REQ_ERR);
    if (!scatter(&qp->cur_recv, qp->cur_placed, p->payload, p->plen)) {
        qp->have_recv = 0;
        cqe(qp, qp->rcq, qp->cur_recv.wr_id, WC_LOC_LEN_ERR, WCO_RECV, 0, 0, 0);
        rwqe_release(&qp->cur_recv);
        return responder_error(b, qp, 1, EV_QP_REQ_ERR);
    }
    qp->cur_placed += p->plen;
    if (is_send_end(p->opcode)) {
        qp->have_recv = 0;
        qp->msn = (qp->msn + 1) & PSN_MASK;
        cqe(qp, qp->rcq, qp->cur_recv.wr_id, WC_SUCCESS, WCO_RECV, qp->cur_placed, p->has_imm, p->imm);
        rwqe_release(&qp->cur_recv);
    }
    return 1;
}

static int on_write(txbatch *b, sr_qp *qp, const rxpkt *p) {
    sr_dev *d = b->d;
    int needs_recv = with_imm(p->opcode);
    if (needs_recv && !qp->rq_count) return rnr_nak(b, qp, p->psn);
    sr_mr *mr;
    uint64_t off, left, total;
    if (is_write_first(p->opcode)) {
        if (qp->cw_mr) return responder_error(b, qp, 1, EV_QP_REQ_ERR);
        mr = map_get(&d->rkeys, p->rkey);
        if (!mr || !mr->valid || mr->pd != qp->pd || !(mr->access & ACC_REMOTE_WRITE) || !(qp->access & ACC_REMOTE_WRITE) ||
            p->vaddr < mr->addr || p->vaddr + (uint64_t)p->dma_len > mr->addr + mr->len || p->plen > p->dma_len)
            return responder_error(b, qp, 2, EV_QP_ACCESS_ERR);
        off = p->vaddr - mr->addr;
        left = total = p->dma_len;
        mr->refs++;
    } else {
        if (!qp->cw_mr) return responder_error(b, qp, 1, EV_QP_REQ_ERR);
        mr = qp->cw_mr;
        off = qp->cw_off;
        left = qp->cw_left;
        total = qp->cw_total;
        qp->cw_mr = NULL;
        if (!mr->valid || p->plen > left) {
            mr_unref(mr);
            return responder_error(b, qp, 2, EV_QP_ACCESS_ERR);
        }
    }
    memcpy(mr->buf + off, p->payload, p->plen);
    off += p->plen;
    left -= p->plen;
    if (is_write_end(p->opcode)) {
        mr_unref(mr);
        qp->msn = (qp->msn + 1) & PSN_MASK;
        if (needs_recv) {
            sr_rwqe *w = &qp->rq[qp->rq_head];
            uint64_t id = w->wr_id;
            rwqe_release(w);
            qp->rq_head = (qp->rq_head + 1) % qp->max_recv_wr;
            qp->rq_count--;
            cqe(qp, qp->rcq, id, WC_SUCCESS, WCO_RECV_RDMA_WITH_IMM, total, 1, p->imm);
        }
    } else {
        qp->cw_mr = mr;
        qp->cw_off = off;
        qp->cw_left = left;
        qp->cw_total = total;
    }
    return 1;
}

static void on_request(txbatch *b, sr_qp *qp, const rxpkt *p, double now) {
    if (qp->state != QPS_RTR && qp->state != QPS_RTS) return;
    int32_t dpsn = psn_diff(p->psn, qp->epsn);
    if (dpsn >= SR_SUSPECT_SPAN || dpsn < -SR_SUSPECT_SPAN) { /* no answer: a forger learns nothing from us */
        suspect(b->d, qp, now);
        return;
    }
    if (dpsn && qp->suspect_count > SR_SUSPECT_PER_SECOND && now - qp->suspect_second < 1.0) {
        /* under a sweep the QP answers only its expected PSN until the second is over */
        qp->st.suspect_ignored++;
        b->d->st.suspect_ignored++;
        return;
    }
    if (dpsn < 0) {
        qp->st.dup_rx++;
        if (p->ackreq) send_ack(b, qp, psn_add(qp->epsn, -1), 0x1F);
        return;
    }
    if (dpsn > 0) {
        if (!qp->nak_seq_sent) {
            qp->nak_seq_sent = 1;
            send_ack(b, qp, qp->epsn, 3u << 5 | 0);
        }
        return;
    }
    qp->nak_seq_sent = 0;
    int ok;
    if (is_send_first(p->opcode) || is_send_cont(p->opcode))
        ok = on_send(b, qp, p);
    else if (is_write_first(p->opcode) || is_write_cont(p->opcode))
        ok = on_write(b, qp, p);
    else {
        responder_error(b, qp, 1, EV_QP_REQ_ERR);
        return;
    }
    if (ok <= 0) return;
    qp->epsn = psn_add(qp->epsn, 1);
    if (p->ackreq) send_ack(b, qp, p->psn, 0x1F);
}

/* ------------------------------------------------------------------ receiving a frame (the twin's SoftDevice._receive) */

/* extension header bytes per opcode (stack/wire/roce.py _EXT); -1: unsupported */
static int ext_len(int op, int *reth, int *aeth, int *imm) {
    *reth = *aeth = *imm = 0;
    switch (op) {
    case 0x00: case 0x01: case 0x02: case 0x04: case 0x07: case 0x08: case 0x0E: case 0x24: case 0x81: return 0;
    case 0x03: case 0x05: case 0x09: *imm = 1; return 4;
    case 0x06: case 0x0A: *reth = 1; return 16;
    case 0x0B: *reth = 1; *imm = 1; return 20;
    case 0x0C: return 16;
    case 0x0D: case 0x0F: case 0x10: case 0x11: *aeth = 1; return 4;
    case 0x12: return 12;
    case 0x13: case 0x14: return 28;
    case 0x16: case 0x17: return 4;
    case 0x64: return 8;
    case 0x65: return 12;
    default: return -1;
    }
}

static void rx_frame(txbatch *b, const uint8_t *data, size_t len, uint32_t src, uint16_t sport, int truncated, double now) {
    sr_dev *d = b->d;
    const char *reason = NULL;
    char why[96];
    rxpkt p = {0};
    int ok = 0;
    if (!d->port_up)
        reason = "port down";
    else if (d->rx_loss > 0 && rng_unit(&d->rng) < d->rx_loss)
        reason = "rx loss";
    else if (truncated) {
        reason = "bad frame: larger than any RoCEv2 frame";
        d->st.bad_frames++;
    } else if (len < 16) {
        snprintf(why, sizeof why, "bad frame: %zu bytes: too short for BTH and ICRC (16)", len);
        reason = why;
        d->st.bad_frames++;
    } else {
        size_t ib = len - 4;
        uint32_t want = sr_icrc(src, d->ip, sport, ROCE_PORT, data, ib);
        uint32_t got = data[ib] | (uint32_t)data[ib + 1] << 8 | (uint32_t)data[ib + 2] << 16 | (uint32_t)data[ib + 3] << 24;
        int reth, aeth, imm, el;
        if (got != want) {
            reason = "bad ICRC";
            d->st.icrc_errors++;
        } else if ((el = ext_len(data[0], &reth, &aeth, &imm)) < 0) {
            snprintf(why, sizeof why, "bad frame: unsupported BTH opcode 0x%02x", data[0]);
            reason = why;
            d->st.bad_frames++;
        } else if (12 + (size_t)el > ib) {
            snprintf(why, sizeof why, "bad frame: extension headers of opcode 0x%02x run past the packet", data[0]);
            reason = why;
            d->st.bad_frames++;
        } else if ((size_t)((data[1] >> 4) & 3) > ib - 12 - el) {
            snprintf(why, sizeof why, "bad frame: pad count %d exceeds the %zu payload bytes", (data[1] >> 4) & 3, ib - 12 - el);
            reason = why;
            d->st.bad_frames++;
        } else {
            p.opcode = data[0];
            p.ackreq = data[8] >> 7;
            p.psn = get24(data + 9);
            const uint8_t *x = data + 12;
            if (reth) {
                p.has_reth = 1;
                p.vaddr = (uint64_t)get32(x) << 32 | get32(x + 4);
                p.rkey = get32(x + 8);
                p.dma_len = get32(x + 12);
                x += 16;
            }
            uint32_t syndrome = 0;
            if (aeth) {
                syndrome = x[0];
                x += 4;
            }
            if (imm) {
                p.has_imm = 1;
                p.imm = get32(x);
                x += 4;
            }
            p.payload = data + 12 + el;
            p.plen = ib - 12 - el - ((data[1] >> 4) & 3);
            ok = 1;
            d->st.rx_frames++;
            if (d->tap_on) tap_record(d, 1, src, sport, d->ip, ROCE_PORT, data, len, NULL, 0);
            sr_qp *qp = map_get(&d->qps, get24(data + 5));
            /* RC accepts packets only from the address it is connected to */
            if (!qp || qp->remote_ip != src) {
                d->st.unknown_qp++;
                return;
            }
            if (p.opcode == OP_ACK)
                on_ack(b, qp, p.psn, syndrome, now);
            else
                on_request(b, qp, &p, now);
            return;
        }
    }
    (void)ok;
    if (d->tap_on) tap_record(d, 1, src, sport, d->ip, ROCE_PORT, data, len, reason, 0);
    d->st.rx_dropped++;
}

/* ------------------------------------------------------------------ the engine thread */

static void run_timers(txbatch *b, double now) {
    sr_dev *d = b->d;
    if (d->ndelayed) send_delayed(d, now);
    if (d->timer_hint == 0 || now < d->timer_hint) return;
    double next = 0;
    for (uint32_t i = 0; i < d->qps.cap; i++) {
        sr_qp *qp = d->qps.vals[i];
        if (!qp) continue;
        if (qp->rnr_at && qp->rnr_at <= now) {
            qp->rnr_at = 0;
            on_timer(b, qp, 1, now);
        }
        if (qp->rto_at && qp->rto_at <= now) {
            qp->rto_at = 0;
            on_timer(b, qp, 0, now);
        }
    }
    for (uint32_t i = 0; i < d->qps.cap; i++) { /* firing may arm others: the exact next deadline */
        sr_qp *qp = d->qps.vals[i];
        if (!qp) continue;
        if (qp->rto_at && (!next || qp->rto_at < next)) next = qp->rto_at;
        if (qp->rnr_at && (!next || qp->rnr_at < next)) next = qp->rnr_at;
    }
    d->timer_hint = next;
}

static int rx_rounds(sr_dev *d, int max_rounds, int app) {
    struct mmsghdr msg[SR_RX_BATCH];
    struct iovec iov[SR_RX_BATCH];
    struct sockaddr_in from[SR_RX_BATCH];
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } ctl[SR_RX_BATCH];
    uint8_t *rxbuf = app ? d->apprxbuf : d->rxbuf;
    size_t slot = d->gro ? SR_GRO_SLOT : SR_RX_SLOT;
    int batch = d->gro ? SR_RX_BATCH / 4 : SR_RX_BATCH;
    txbatch b;
    b.d = d;
    b.n = 0;
    b.hold_acks = 0;
    int total = 0;
    for (int round = 0; round < max_rounds; round++) {
        for (int i = 0; i < batch; i++) {
            iov[i] = (struct iovec){rxbuf + (size_t)i * slot, slot};
            memset(&msg[i], 0, sizeof msg[i]);
            msg[i].msg_hdr.msg_iov = &iov[i];
            msg[i].msg_hdr.msg_iovlen = 1;
            msg[i].msg_hdr.msg_name = &from[i];
            msg[i].msg_hdr.msg_namelen = sizeof from[i];
            if (d->gro) {
                msg[i].msg_hdr.msg_control = ctl[i].buf;
                msg[i].msg_hdr.msg_controllen = sizeof ctl[i].buf;
            }
        }
        pthread_mutex_lock(&d->rxlock);
        int n = recvmmsg(d->sock, msg, batch, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            pthread_mutex_unlock(&d->rxlock);
            break;
        }
        double now = now_mono();
        pthread_mutex_lock(&d->lock);
        if (app) {
            d->inline_tid = pthread_self();
            d->inline_active = 1;
            b.hold_acks = 1;
        }
        d->st.rx_batches++;
        for (int i = 0; i < n; i++) {
            const uint8_t *data = iov[i].iov_base;
            size_t len = msg[i].msg_len, seg = len;
            int trunc = (msg[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
            if (d->gro)
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg[i].msg_hdr); c; c = CMSG_NXTHDR(&msg[i].msg_hdr, c))
                    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                        int g;
                        memcpy(&g, CMSG_DATA(c), sizeof g);
                        if (g > 0 && (size_t)g < len) {
                            seg = g;
                            d->st.rx_gro_datagrams++;
                        }
                    }
            uint32_t src = from[i].sin_addr.s_addr;
            uint16_t sport = ntohs(from[i].sin_port);
            for (size_t off = 0; off < len; off += seg) /* the frames of a GRO datagram, one by one */
                rx_frame(&b, data + off, len - off < seg ? len - off : seg, src, sport, trunc, now);
        }
        if (b.n) tx_flush(&b);
        d->inline_active = 0;
        pthread_mutex_unlock(&d->lock);
        pthread_mutex_unlock(&d->rxlock);
        total += n;
        if (n < batch) break;
    }
    return total;
}

static void rx_drain(sr_dev *d) { rx_rounds(d, 16, 0); }

int sr_rx_poll(sr_dev *d, int max_rounds) {
    d->app_polled = now_mono();
    return rx_rounds(d, max_rounds, 1);
}

int sr_flush_acks(sr_dev *d) {
    txbatch b;
    b.d = d;
    b.n = 0;
    b.hold_acks = 0;
    pthread_mutex_lock(&d->lock);
    int n = d->nacks;
    flush_held_acks(&b);
    if (b.n) tx_flush(&b);
    pthread_mutex_unlock(&d->lock);
    return n;
}

static void *engine_main(void *arg) {
    sr_dev *d = arg;
    pthread_setname_np(pthread_self(), "soft-roce");
    struct pollfd pfd[2] = {{d->sock, POLLIN, 0}, {d->wakefd, POLLIN, 0}};
    while (d->running) {
        double now = now_mono(), next = now + SR_TICK;
        /* while the application takes the frames itself, stay off the socket (no second
         * wake-up per frame) but look again when it has not come for a while */
        double app = d->app_polled;
        int app_polls = now - app < SR_APP_GRACE;
        if (app_polls && app + SR_APP_GRACE < next) next = app + SR_APP_GRACE;
        pthread_mutex_lock(&d->lock);
        if (d->timer_hint && d->timer_hint < next) next = d->timer_hint;
        if (d->ndelayed && d->delayed[0].due < next) next = d->delayed[0].due;
        if (d->nacks && d->acks_since + SR_APP_GRACE < next) next = d->acks_since + SR_APP_GRACE;
        d->wake_at = next;
        pthread_mutex_unlock(&d->lock);
        struct timespec ts;
        double left = next - now;
        if (left < 0) left = 0;
        ts.tv_sec = (time_t)left;
        ts.tv_nsec = (long)((left - ts.tv_sec) * 1e9);
        pfd[0].fd = app_polls ? -1 : d->sock;
        int r = ppoll(pfd, 2, &ts, NULL);
        if (!d->running) break;
        if (r > 0 && pfd[1].revents) {
            uint64_t v;
            ssize_t n = read(d->wakefd, &v, 8);
            (void)n;
        }
        if ((r > 0 && pfd[0].revents) || (app_polls && now_mono() - d->app_polled >= SR_APP_GRACE)) rx_drain(d);
        txbatch b;
        b.d = d;
        b.n = 0;
        b.hold_acks = 0;
        pthread_mutex_lock(&d->lock);
        if (d->nacks && now_mono() - d->acks_since >= SR_APP_GRACE) flush_held_acks(&b); /* the application forgot them */
        run_timers(&b, now_mono());
        if (b.n) tx_flush(&b);
        pthread_mutex_unlock(&d->lock);
    }
    return NULL;
}

/* ------------------------------------------------------------------ device */

sr_dev *sr_dev_open(int sock, uint32_t ip_be, uint32_t mtu, uint64_t seed, int gso, char *err, size_t errlen) {
    sr_dev *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->sock = sock;
    d->ip = ip_be;
    d->mtu = mtu;
    d->port_up = 1;
    d->rng = seed;
    d->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    d->tapfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (gso) { /* receiving GRO batches costs nothing when none come: on whenever GSO may be */
        int one = 1;
        d->gso = gso > 0;
        d->gro = setsockopt(sock, SOL_UDP, UDP_GRO, &one, sizeof one) == 0;
    }
    size_t rxlen = d->gro ? (size_t)(SR_RX_BATCH / 4) * SR_GRO_SLOT : (size_t)SR_RX_BATCH * SR_RX_SLOT;
    d->rxbuf = malloc(rxlen);
    d->apprxbuf = malloc(rxlen);
    if (d->wakefd < 0 || d->tapfd < 0 || !d->rxbuf || !d->apprxbuf) {
        snprintf(err, errlen, "cannot create the engine's eventfds or buffers: %s", strerror(errno));
        if (d->wakefd >= 0) close(d->wakefd);
        if (d->tapfd >= 0) close(d->tapfd);
        free(d->rxbuf);
        free(d->apprxbuf);
        free(d);
        return NULL;
    }
    pthread_mutex_init(&d->rxlock, NULL);
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->taplock, NULL);
    return d;
}

int sr_dev_start(sr_dev *d) {
    d->running = 1;
    int rc = pthread_create(&d->thread, NULL, engine_main, d);
    if (rc) {
        d->running = 0;
        return -rc;
    }
    return 0;
}

static void qp_free(sr_qp *qp) {
    while (qp->sq_count) sq_pop(qp);
    while (qp->rq_count) {
        rwqe_release(&qp->rq[qp->rq_head]);
        qp->rq_head = (qp->rq_head + 1) % qp->max_recv_wr;
        qp->rq_count--;
    }
    if (qp->have_recv) rwqe_release(&qp->cur_recv);
    if (qp->cw_mr) mr_unref(qp->cw_mr);
    free(qp->sq);
    free(qp->rq);
    free(qp);
}

void sr_dev_close(sr_dev *d) {
    if (d->running) {
        d->running = 0;
        uint64_t one = 1;
        ssize_t w = write(d->wakefd, &one, 8);
        (void)w;
        pthread_join(d->thread, NULL);
    }
    pthread_mutex_lock(&d->lock);
    for (uint32_t i = 0; i < d->qps.cap; i++) {
        sr_qp *qp = d->qps.vals[i];
        if (qp) {
            qp->state = QPS_RESET;
            qp_free(qp);
            d->qps.vals[i] = NULL;
        }
    }
    d->qps.used = 0;
    while (d->ndelayed) free(delay_pop(d).data);
    pthread_mutex_unlock(&d->lock);
}

void *sr_dev_next_owner(sr_dev *d) {
    pthread_mutex_lock(&d->lock);
    void *owner = NULL;
    for (uint32_t i = 0; i < d->lkeys.cap && !owner; i++) {
        sr_mr *mr = d->lkeys.vals[i];
        if (mr && mr->owner) {
            owner = mr->owner;
            mr->owner = NULL;
            mr->valid = 0;
        }
    }
    pthread_mutex_unlock(&d->lock);
    return owner;
}

void sr_dev_free(sr_dev *d) {
    /* the binding has deregistered every MR (and released their memory) before this */
    for (uint32_t i = 0; i < d->lkeys.cap; i++)
        if (d->lkeys.vals[i]) free(d->lkeys.vals[i]);
    free(d->lkeys.keys);
    free(d->lkeys.vals);
    free(d->rkeys.keys);
    free(d->rkeys.vals);
    free(d->qps.keys);
    free(d->qps.vals);
    for (int i = 0; i < d->ncqs; i++) {
        sr_cq *cq = d->cqs[i];
        if (cq->efd >= 0) close(cq->efd);
        free(cq->ring);
        free(cq);
    }
    free(d->cqs);
    free(d->delayed);
    free(d->zombies);
    free(d->tapbuf);
    free(d->rxbuf);
    free(d->apprxbuf);
    close(d->wakefd);
    close(d->tapfd);
    close(d->sock);
    free(d);
}

void sr_set_port(sr_dev *d, int up) {
    pthread_mutex_lock(&d->lock);
    if (!!up != d->port_up) {
        d->port_up = !!up;
        post_event(d, up ? EV_PORT_ACTIVE : EV_PORT_ERR, 1, 0);
    }
    pthread_mutex_unlock(&d->lock);
}

void sr_set_gso(sr_dev *d, int on) {
    pthread_mutex_lock(&d->lock);
    d->gso = !!on;
    pthread_mutex_unlock(&d->lock);
}

void sr_set_faults(sr_dev *d, double loss, double rx_loss, int64_t drop_next, double delay) {
    pthread_mutex_lock(&d->lock);
    d->loss = loss;
    d->rx_loss = rx_loss;
    d->drop_next = drop_next;
    d->delay = delay;
    pthread_mutex_unlock(&d->lock);
}

void sr_reseed(sr_dev *d, uint64_t seed) {
    pthread_mutex_lock(&d->lock);
    d->rng = seed;
    pthread_mutex_unlock(&d->lock);
}

/* ------------------------------------------------------------------ QP verbs */

static sr_qp *qp_get(sr_dev *d, uint32_t qpn) { return map_get(&d->qps, qpn); }

int sr_qp_create(sr_dev *d, uint32_t qpn, int pd, int scq, int rcq, int max_send_wr, int max_recv_wr, int max_send_sge,
                 int max_recv_sge, int max_inline) {
    if (max_send_wr <= 0 || max_recv_wr <= 0) return fail(d, EINVAL, "create_rc_qp: queue sizes must be positive");
    if (max_send_sge > SR_MAX_SGE || max_recv_sge > SR_MAX_SGE)
        return fail(d, EINVAL, "create_rc_qp: at most %d SGEs per WR", SR_MAX_SGE);
    sr_cq *s = sr_cq_get(d, scq), *r = sr_cq_get(d, rcq);
    if (!s || !r) return fail(d, EINVAL, "create_rc_qp: completion queues must belong to this device");
    sr_qp *qp = calloc(1, sizeof *qp);
    if (!qp) return -ENOMEM;
    qp->sq = calloc(max_send_wr, sizeof *qp->sq);
    qp->rq = calloc(max_recv_wr, sizeof *qp->rq);
    if (!qp->sq || !qp->rq) {
        free(qp->sq);
        free(qp->rq);
        free(qp);
        return -ENOMEM;
    }
    qp->qpn = qpn;
    qp->pd = pd;
    qp->scq = s;
    qp->rcq = r;
    qp->max_send_wr = max_send_wr;
    qp->max_recv_wr = max_recv_wr;
    qp->max_send_sge = max_send_sge;
    qp->max_recv_sge = max_recv_sge;
    qp->max_inline = max_inline;
    qp->mtu = 1024;
    pthread_mutex_lock(&d->lock);
    int rc = qp_get(d, qpn) ? fail(d, EEXIST, "create_rc_qp: QP 0x%06x exists", qpn) : map_put(&d->qps, qpn, qp);
    pthread_mutex_unlock(&d->lock);
    if (rc) {
        free(qp->sq);
        free(qp->rq);
        free(qp);
    }
    return rc;
}

static const char *state_name(int s) {
    switch (s) {
    case QPS_RESET: return "RESET";
    case QPS_INIT: return "INIT";
    case QPS_RTR: return "RTR";
    case QPS_RTS: return "RTS";
    case QPS_ERR: return "ERR";
    default: return "?";
    }
}

#define WITH_QP(d, qpn, qp)                                                       \
    pthread_mutex_lock(&(d)->lock);                                               \
    sr_qp *qp = qp_get((d), (qpn));                                               \
    if (!qp) {                                                                    \
        pthread_mutex_unlock(&(d)->lock);                                         \
        return fail((d), ENOENT, "QP 0x%06x does not exist on this device", qpn); \
    }

int sr_qp_init(sr_dev *d, uint32_t qpn, int access) {
    WITH_QP(d, qpn, qp);
    int rc = 0;
    if (qp->state != QPS_RESET && qp->state != QPS_INIT)
        rc = fail(d, EINVAL, "to_init: QP 0x%06x is in %s", qpn, state_name(qp->state));
    else {
        qp->access = access;
        qp->state = QPS_INIT;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int sr_qp_rtr(sr_dev *d, uint32_t qpn, uint32_t remote_qpn, uint32_t remote_psn, uint32_t remote_ip, uint32_t path_mtu, int timeout,
              int retry_cnt, int rnr_retry, int min_rnr_timer) {
    WITH_QP(d, qpn, qp);
    int rc = 0;
    if (qp->state != QPS_INIT)
        rc = fail(d, EINVAL, "to_rtr: QP 0x%06x is in %s", qpn, state_name(qp->state));
    else {
        qp->have_path = 1;
        qp->remote_qpn = remote_qpn;
        qp->remote_ip = remote_ip;
        qp->mtu = path_mtu < d->mtu ? path_mtu : d->mtu;
        qp->epsn = remote_psn & PSN_MASK;
        qp->timeout = timeout;
        qp->retry_cnt = retry_cnt;
        qp->rnr_retry = rnr_retry;
        qp->min_rnr_timer = min_rnr_timer;
        qp->state = QPS_RTR;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int sr_qp_rts(sr_dev *d, uint32_t qpn, uint32_t remote_qpn, uint32_t local_psn, int timeout, int retry_cnt, int rnr_retry,
              int min_rnr_timer) {
    WITH_QP(d, qpn, qp);
    int rc = 0;
    if (qp->state != QPS_RTR && qp->state != QPS_RTS)
        rc = fail(d, EINVAL, "to_rts: QP 0x%06x is in %s", qpn, state_name(qp->state));
    else if (!qp->have_path || remote_qpn != qp->remote_qpn)
        rc = fail(d, EINVAL, "to_rts: the path must be the one given to to_rtr");
    else {
        if (qp->state == QPS_RTR) qp->psn_tail = qp->snd_nxt = qp->una = local_psn & PSN_MASK;
        qp->timeout = timeout;
        qp->retry_cnt = retry_cnt;
        qp->rnr_retry = rnr_retry;
        qp->min_rnr_timer = min_rnr_timer;
        qp->retry_left = retry_cnt;
        qp->rnr_left = rnr_retry;
        qp->state = QPS_RTS;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int sr_qp_to_error(sr_dev *d, uint32_t qpn) {
    WITH_QP(d, qpn, qp);
    enter_error(d, qp);
    pthread_mutex_unlock(&d->lock);
    return 0;
}

int sr_qp_destroy(sr_dev *d, uint32_t qpn) {
    WITH_QP(d, qpn, qp);
    map_del(&d->qps, qpn);
    qp->state = QPS_RESET;
    qp_free(qp);
    pthread_mutex_unlock(&d->lock);
    return 0;
}

int sr_qp_state(sr_dev *d, uint32_t qpn) {
    WITH_QP(d, qpn, qp);
    int s = qp->state;
    pthread_mutex_unlock(&d->lock);
    return s;
}

int sr_qp_stats(sr_dev *d, uint32_t qpn, sr_qpstats *out) {
    WITH_QP(d, qpn, qp);
    *out = qp->st;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

static int gather(sr_dev *d, sr_qp *qp, const sr_send_in *wr, sr_swqe *e) {
    /* a bad lkey or range is a local protection error, as a NIC reports it */
    uint64_t total = 0;
    sr_mr *mrs[SR_MAX_SGE];
    for (int i = 0; i < wr->nsge; i++) {
        const sr_sge_in *s = &wr->sge[i];
        sr_mr *mr = map_get(&d->lkeys, s->lkey);
        if (!mr || !mr->valid || mr->pd != qp->pd || s->off + (uint64_t)s->len > mr->len) return 0;
        mrs[i] = mr;
        total += s->len;
    }
    if (total > 0x7FFFFFFF) return 0;
    e->nsge = 0;
    for (int i = 0; i < wr->nsge; i++) {
        if (!wr->sge[i].len) continue;
        mrs[i]->refs++;
        e->sge[e->nsge++] = (sr_sge){mrs[i], wr->sge[i].off, wr->sge[i].len};
    }
    e->len = total;
    return 1;
}

int sr_post_send(sr_dev *d, uint32_t qpn, const sr_send_in *wrs, int n) {
    WITH_QP(d, qpn, qp);
    int rc = 0;
    double now = now_mono();
    txbatch b;
    b.d = d;
    b.n = 0;
    b.hold_acks = 0;
    if (qp->state == QPS_ERR) {
        for (int i = 0; i < n; i++) cqe(qp, qp->scq, wrs[i].wr_id, WC_WR_FLUSH_ERR, wc_op(wrs[i].opcode), 0, 0, 0);
        goto out;
    }
    if (qp->state != QPS_RTS) {
        rc = fail(d, EINVAL, "post_send: QP 0x%06x is in %s, not RTS", qpn, state_name(qp->state));
        goto out;
    }
    if (qp->sq_count + n > qp->max_send_wr) {
        rc = fail(d, ENOMEM, "post_send: send queue full (%d WRs)", qp->max_send_wr);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const sr_send_in *w = &wrs[i];
        if (w->opcode < WR_RDMA_WRITE || w->opcode > WR_SEND_WITH_IMM) {
            rc = fail(d, EOPNOTSUPP, "post_send: opcode %d is not supported", w->opcode);
            goto out;
        }
        if (w->nsge > qp->max_send_sge) {
            rc = fail(d, EINVAL, "post_send: %d SGEs, the QP allows %d", w->nsge, qp->max_send_sge);
            goto out;
        }
        uint64_t total = 0;
        for (int k = 0; k < w->nsge; k++) total += w->sge[k].len;
        if ((w->flags & SF_INLINE) && total > (uint64_t)qp->max_inline) {
            rc = fail(d, EINVAL, "post_send: %llu bytes inline, the QP allows %d", (unsigned long long)total, qp->max_inline);
            goto out;
        }
    }
    if (d->nacks) flush_held_acks(&b); /* the ACKs of what we just received ride with our reply */
    for (int i = 0; i < n; i++) {
        const sr_send_in *w = &wrs[i];
        sr_swqe *e = sq_at(qp, qp->sq_count);
        if (!gather(d, qp, w, e)) {
            cqe(qp, qp->scq, w->wr_id, WC_LOC_PROT_ERR, wc_op(w->opcode), 0, 0, 0);
            enter_error(d, qp);
            goto out;
        }
        uint32_t npkts = e->len ? (e->len + qp->mtu - 1) / qp->mtu : 1;
        e->wr_id = w->wr_id;
        e->opcode = w->opcode;
        e->flags = w->flags;
        e->raddr = w->raddr;
        e->rkey = w->rkey;
        e->imm = w->has_imm ? w->imm : 0;
        e->first_psn = qp->psn_tail;
        e->npkts = npkts;
        qp->sq_count++;
        qp->psn_tail = psn_add(qp->psn_tail, npkts);
    }
    pump(&b, qp, now);
out:
    if (b.n) tx_flush(&b);
    pthread_mutex_unlock(&d->lock);
    return rc;
}

int sr_post_recv(sr_dev *d, uint32_t qpn, const sr_recv_in *wrs, int n) {
    WITH_QP(d, qpn, qp);
    int rc = 0;
    if (qp->state == QPS_ERR) {
        for (int i = 0; i < n; i++) cqe(qp, qp->rcq, wrs[i].wr_id, WC_WR_FLUSH_ERR, WCO_RECV, 0, 0, 0);
        goto out;
    }
    if (qp->state == QPS_RESET) {
        rc = fail(d, EINVAL, "post_recv: QP 0x%06x is in RESET", qpn);
        goto out;
    }
    if (qp->rq_count + n > qp->max_recv_wr) {
        rc = fail(d, ENOMEM, "post_recv: receive queue full (%d WRs)", qp->max_recv_wr);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (wrs[i].nsge > qp->max_recv_sge) {
            rc = fail(d, EINVAL, "post_recv: %d SGEs, the QP allows %d", wrs[i].nsge, qp->max_recv_sge);
            goto out;
        }
    for (int i = 0; i < n; i++) {
        sr_rwqe *w = &qp->rq[(qp->rq_head + qp->rq_count) % qp->max_recv_wr];
        w->wr_id = wrs[i].wr_id;
        w->nsge = 0;
        for (int k = 0; k < wrs[i].nsge; k++) {
            sr_mr *mr = map_get(&d->lkeys, wrs[i].sge[k].lkey);
            /* an unknown or deregistered key fails only when a SEND lands there (LOC_LEN_ERR), as in the twin */
            if (mr) mr->refs++;
            w->sge[w->nsge++] = (sr_sge){mr, wrs[i].sge[k].off, wrs[i].sge[k].len};
        }
        qp->rq_count++;
    }
out:
    pthread_mutex_unlock(&d->lock);
    return rc;
}
