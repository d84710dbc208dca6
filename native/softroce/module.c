/* Python binding of the compiled soft RoCEv2 engine: module native._softroce.
 *
 * One type, Device, with flat methods over plain numbers and tuples; the verbs objects
 * (PD, MR, CQ, QP) live in stack/verbs/soft/native.py. The engine's own thread never takes
 * the interpreter lock; calls from Python keep it (they are short), except the tap's wait. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>

#include "engine.h"

typedef struct {
    PyObject_HEAD
    sr_dev *dev;
    int closed;
} DeviceObject;

typedef struct {
    Py_buffer view;
} Owner;

static PyTypeObject *frame_class; /* FrameRecord (a tuple subclass) the tap hands out, when set */

/* the text of an IPv4 address, cached: a tap sees the same few over and over */
static PyObject *ip_text(uint32_t ip_be) {
    static uint32_t keys[16];
    static PyObject *vals[16];
    unsigned slot = (ip_be ^ (ip_be >> 16)) & 15;
    if (vals[slot] && keys[slot] == ip_be) {
        Py_INCREF(vals[slot]);
        return vals[slot];
    }
    const uint8_t *b = (const uint8_t *)&ip_be;
    PyObject *t = PyUnicode_FromFormat("%u.%u.%u.%u", b[0], b[1], b[2], b[3]);
    if (!t) return NULL;
    Py_XDECREF(vals[slot]);
    keys[slot] = ip_be;
    vals[slot] = t;
    Py_INCREF(t);
    return t;
}


static PyObject *engine_error(sr_dev *d, int rc) {
    int err = -rc;
    const char *msg = d->last_error[0] ? d->last_error : strerror(err);
    PyObject *args = Py_BuildValue("(is)", err, msg);
    if (args) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    d->last_error[0] = 0;
    return NULL;
}

#define CHECK_OPEN(self)                                                    \
    if ((self)->closed || !(self)->dev) {                                   \
        PyErr_SetString(PyExc_ValueError, "the soft RoCE device is closed"); \
        return NULL;                                                        \
    }

static int Device_init(DeviceObject *self, PyObject *args, PyObject *kw) {
    int fd, gso = 0;
    unsigned int ip, mtu;
    unsigned long long seed;
    /* gso: 1 send GSO batches, -1 receive them but send frame by frame for now (set_gso), 0 neither */
    if (!PyArg_ParseTuple(args, "iIIK|i", &fd, &ip, &mtu, &seed, &gso)) return -1;
    char err[160];
    self->dev = sr_dev_open(fd, ip, mtu, seed, gso, err, sizeof err);
    if (!self->dev) {
        PyErr_SetString(PyExc_OSError, err);
        return -1;
    }
    int rc = sr_dev_start(self->dev);
    if (rc) {
        sr_dev_free(self->dev);
        self->dev = NULL;
        errno = -rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static void release_owner(Owner *o) {
    PyBuffer_Release(&o->view);
    PyMem_Free(o);
}

static void release_zombies(sr_dev *d) {
    if (!d->nzombies) return; /* a racy peek is fine: the next call looks again */
    Owner *o;
    while ((o = sr_take_zombie(d)) != NULL) release_owner(o);
}

static void release_owners(sr_dev *d) {
    Owner *o;
    release_zombies(d);
    while ((o = sr_dev_next_owner(d)) != NULL) release_owner(o);
}

static PyObject *Device_close(DeviceObject *self, PyObject *unused) {
    if (!self->closed && self->dev) {
        self->closed = 1;
        Py_BEGIN_ALLOW_THREADS sr_dev_close(self->dev);
        Py_END_ALLOW_THREADS release_owners(self->dev);
        sr_dev_free(self->dev);
        self->dev = NULL;
    }
    Py_RETURN_NONE;
}

static void Device_dealloc(DeviceObject *self) {
    PyObject *r = Device_close(self, NULL);
    Py_XDECREF(r);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ------------------------------------------------------------------ memory */

static PyObject *Device_reg_mr(DeviceObject *self, PyObject *args) {
    unsigned int lkey, rkey;
    unsigned long long addr;
    PyObject *buffer;
    int access, pd;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "IIKOii", &lkey, &rkey, &addr, &buffer, &access, &pd)) return NULL;
    Owner *o = PyMem_Malloc(sizeof *o);
    if (!o) return PyErr_NoMemory();
    if (PyObject_GetBuffer(buffer, &o->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyMem_Free(o);
        return NULL;
    }
    int rc = sr_reg_mr(self->dev, lkey, rkey, addr, o->view.buf, (uint64_t)o->view.len, access, pd, o);
    if (rc) {
        PyBuffer_Release(&o->view);
        PyMem_Free(o);
        return engine_error(self->dev, rc);
    }
    Py_RETURN_NONE;
}

static PyObject *Device_dereg_mr(DeviceObject *self, PyObject *args) {
    unsigned int lkey;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "I", &lkey)) return NULL;
    void *o = NULL;
    int found = sr_dereg_mr(self->dev, lkey, &o);
    if (o) release_owner(o);
    release_zombies(self->dev);
    return PyBool_FromLong(found);
}

/* ------------------------------------------------------------------ completion queues */

static PyObject *Device_cq_create(DeviceObject *self, PyObject *args) {
    int depth;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "i", &depth)) return NULL;
    int id = sr_cq_create(self->dev, depth);
    if (id < 0) return engine_error(self->dev, id);
    return PyLong_FromLong(id);
}

static sr_cq *get_cq(DeviceObject *self, PyObject *args) {
    int id;
    if (!PyArg_ParseTuple(args, "i", &id)) return NULL;
    sr_cq *cq = sr_cq_get(self->dev, id);
    if (!cq) PyErr_Format(PyExc_ValueError, "no completion queue %d", id);
    return cq;
}

static PyObject *Device_cq_fd(DeviceObject *self, PyObject *args) {
    CHECK_OPEN(self);
    sr_cq *cq = get_cq(self, args);
    return cq ? PyLong_FromLong(cq->efd) : NULL;
}

static PyObject *Device_cq_len(DeviceObject *self, PyObject *args) {
    CHECK_OPEN(self);
    sr_cq *cq = get_cq(self, args);
    if (!cq) return NULL;
    pthread_mutex_lock(&cq->lock);
    int n = cq->count;
    unsigned long long o = cq->overruns;
    pthread_mutex_unlock(&cq->lock);
    return Py_BuildValue("(iK)", n, o);
}

static PyObject *Device_cq_destroy(DeviceObject *self, PyObject *args) {
    int id;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "i", &id)) return NULL;
    sr_cq_destroy(self->dev, id);
    Py_RETURN_NONE;
}

/* (wr_id, status, opcode, qp_num, byte_len, imm or None, vendor_err) per completion */
static PyObject *Device_cq_poll(DeviceObject *self, PyObject *args) {
    int id, max;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "ii", &id, &max)) return NULL;
    sr_cq *cq = sr_cq_get(self->dev, id);
    if (!cq) return PyErr_Format(PyExc_ValueError, "no completion queue %d", id);
    sr_wc wcs[64];
    release_zombies(self->dev);
    if (max > 64) max = 64;
    if (max < 0) max = 0;
    int n = sr_cq_poll(cq, wcs, max);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        sr_wc *w = &wcs[i];
        PyObject *imm;
        if (w->has_imm)
            imm = PyLong_FromUnsignedLong(w->imm);
        else {
            imm = Py_None;
            Py_INCREF(imm);
        }
        PyObject *t = Py_BuildValue("(KiiIINI)", (unsigned long long)w->wr_id, w->status, w->opcode, w->qp_num, w->byte_len, imm,
                                    w->vendor_err);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

/* ------------------------------------------------------------------ queue pairs */

static PyObject *Device_qp_create(DeviceObject *self, PyObject *args) {
    unsigned int qpn;
    int pd, scq, rcq, msw, mrw, mss, mrs, mi;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "Iiiiiiiii", &qpn, &pd, &scq, &rcq, &msw, &mrw, &mss, &mrs, &mi)) return NULL;
    int rc = sr_qp_create(self->dev, qpn, pd, scq, rcq, msw, mrw, mss, mrs, mi);
    if (rc) return engine_error(self->dev, rc);
    Py_RETURN_NONE;
}

static PyObject *Device_qp_init(DeviceObject *self, PyObject *args) {
    unsigned int qpn;
    int access;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "Ii", &qpn, &access)) return NULL;
    int rc = sr_qp_init(self->dev, qpn, access);
    if (rc) return engine_error(self->dev, rc);
    Py_RETURN_NONE;
}

static PyObject *Device_qp_rtr(DeviceObject *self, PyObject *args) {
    unsigned int qpn, rqpn, rpsn, rip, mtu;
    int timeout, retry, rnr, minrnr;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "IIIIIiiii", &qpn, &rqpn, &rpsn, &rip, &mtu, &timeout, &retry, &rnr, &minrnr)) return NULL;
    int rc = sr_qp_rtr(self->dev, qpn, rqpn, rpsn, rip, mtu, timeout, retry, rnr, minrnr);
    if (rc) return engine_error(self->dev, rc);
    Py_RETURN_NONE;
}

static PyObject *Device_qp_rts(DeviceObject *self, PyObject *args) {
    unsigned int qpn, rqpn, lpsn;
    int timeout, retry, rnr, minrnr;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "IIIiiii", &qpn, &rqpn, &lpsn, &timeout, &retry, &rnr, &minrnr)) return NULL;
    int rc = sr_qp_rts(self->dev, qpn, rqpn, lpsn, timeout, retry, rnr, minrnr);
    if (rc) return engine_error(self->dev, rc);
    Py_RETURN_NONE;
}

#define QPN_CALL(name, fn)                                       \
    static PyObject *name(DeviceObject *self, PyObject *args) { \
        unsigned int qpn;                                        \
        CHECK_OPEN(self);                                        \
        if (!PyArg_ParseTuple(args, "I", &qpn)) return NULL;     \
        int rc = fn(self->dev, qpn);                             \
        if (rc < 0) return engine_error(self->dev, rc);          \
        return PyLong_FromLong(rc);                              \
    }
QPN_CALL(Device_qp_to_error, sr_qp_to_error)
QPN_CALL(Device_qp_destroy, sr_qp_destroy)
QPN_CALL(Device_qp_state, sr_qp_state)

static PyObject *Device_qp_stats(DeviceObject *self, PyObject *args) {
    unsigned int qpn;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "I", &qpn)) return NULL;
    sr_qpstats s;
    int rc = sr_qp_stats(self->dev, qpn, &s);
    if (rc) return engine_error(self->dev, rc);
    return Py_BuildValue("{sKsKsKsKsKsKsKsK}", "tx", s.tx, "retransmits", s.retransmits, "timeouts", s.timeouts, "rnr_naks_rx",
                         s.rnr_naks_rx, "seq_naks_rx", s.seq_naks_rx, "dup_rx", s.dup_rx, "psn_out_of_window", s.psn_out_of_window,
                         "suspect_ignored", s.suspect_ignored);
}

/* An SGE (lkey, offset, length); a negative offset or length becomes a range no MR has,
 * so the post fails with a local protection error as in the twin. */
static int parse_sges(PyObject *seq, sr_sge_in *out, int *n) {
    PyObject *fast = PySequence_Fast(seq, "SGEs must be a sequence of (lkey, offset, length)");
    if (!fast) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len > SR_MAX_SGE) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %d SGEs per work request", SR_MAX_SGE);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned int lkey;
        long long off, ln;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "ILL", &lkey, &off, &ln)) {
            Py_DECREF(fast);
            return -1;
        }
        out[i].lkey = lkey;
        out[i].off = off < 0 || ln < 0 ? UINT64_MAX / 2 : (uint64_t)off;
        out[i].len = ln < 0 ? 0 : ln > 0x7FFFFFFF ? 0x7FFFFFFF : (uint32_t)ln;
    }
    *n = (int)len;
    Py_DECREF(fast);
    return 0;
}

static PyObject *Device_post_send(DeviceObject *self, PyObject *args) {
    unsigned int qpn;
    PyObject *wrs;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "IO", &qpn, &wrs)) return NULL;
    PyObject *fast = PySequence_Fast(wrs, "work requests must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    sr_send_in small[4], *in = n <= 4 ? small : PyMem_Calloc(n, sizeof *in);
    if (!in) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    uint64_t bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long wr_id, raddr;
        int opcode, flags;
        unsigned int rkey;
        PyObject *imm, *sges;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "KiiKIOO", &wr_id, &opcode, &flags, &raddr, &rkey, &imm, &sges))
            goto bad;
        sr_send_in *w = &in[i];
        memset(w, 0, sizeof *w);
        w->wr_id = wr_id;
        w->opcode = opcode;
        w->flags = flags;
        w->raddr = raddr;
        w->rkey = rkey;
        if (imm != Py_None) {
            w->has_imm = 1;
            w->imm = (uint32_t)PyLong_AsUnsignedLongMask(imm);
            if (PyErr_Occurred()) goto bad;
        }
        if (parse_sges(sges, w->sge, &w->nsge) < 0) goto bad;
        for (int k = 0; k < w->nsge; k++) bytes += w->sge[k].len;
    }
    /* the interpreter lock stays held: a post takes tens of microseconds at most, and giving
     * the lock away mid-stream lets another Python thread (a tap, a recorder) keep it for up
     * to the switch interval while this, the busy thread, waits to get it back */
    (void)bytes;
    int rc = sr_post_send(self->dev, qpn, in, (int)n);
    if (in != small) PyMem_Free(in);
    Py_DECREF(fast);
    if (rc) return engine_error(self->dev, rc);
    Py_RETURN_NONE;
bad:
    if (in != small) PyMem_Free(in);
    Py_DECREF(fast);
    return NULL;
}

static PyObject *Device_post_recv(DeviceObject *self, PyObject *args) {
    unsigned int qpn;
    PyObject *wrs;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "IO", &qpn, &wrs)) return NULL;
    PyObject *fast = PySequence_Fast(wrs, "work requests must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    sr_recv_in *in = PyMem_Calloc(n ? n : 1, sizeof *in);
    if (!in) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long wr_id;
        PyObject *sges;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "KO", &wr_id, &sges) || parse_sges(sges, in[i].sge, &in[i].nsge) < 0) {
            PyMem_Free(in);
            Py_DECREF(fast);
            return NULL;
        }
        in[i].wr_id = wr_id;
    }
    int rc = sr_post_recv(self->dev, qpn, in, (int)n);
    PyMem_Free(in);
    Py_DECREF(fast);
    if (rc) return engine_error(self->dev, rc);
    Py_RETURN_NONE;
}

static PyObject *Device_rx_poll(DeviceObject *self, PyObject *args) {
    int rounds = 4;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "|i", &rounds)) return NULL;
    sr_rx_poll(self->dev, rounds);
    return PyLong_FromLong(self->dev->nacks); /* the ACKs held for the caller's reply (flush_acks) */
}

static PyObject *Device_flush_acks(DeviceObject *self, PyObject *unused) {
    CHECK_OPEN(self);
    return PyLong_FromLong(sr_flush_acks(self->dev));
}

static PyObject *Device_acks_held(DeviceObject *self, PyObject *unused) {
    CHECK_OPEN(self);
    return PyLong_FromLong(self->dev->nacks);
}

static PyObject *Device_fileno(DeviceObject *self, PyObject *unused) {
    CHECK_OPEN(self);
    return PyLong_FromLong(self->dev->sock);
}

/* ------------------------------------------------------------------ port, faults, events, stats */

static PyObject *Device_set_port(DeviceObject *self, PyObject *args) {
    int up;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "p", &up)) return NULL;
    sr_set_port(self->dev, up);
    Py_RETURN_NONE;
}

static PyObject *Device_set_gso(DeviceObject *self, PyObject *args) {
    int on;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    if (on && !self->dev->gro) {
        PyErr_SetString(PyExc_ValueError, "this device was opened without GSO");
        return NULL;
    }
    sr_set_gso(self->dev, on);
    Py_RETURN_NONE;
}

static PyObject *Device_set_faults(DeviceObject *self, PyObject *args) {
    double loss, rx_loss, delay;
    long long drop_next;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "ddLd", &loss, &rx_loss, &drop_next, &delay)) return NULL;
    sr_set_faults(self->dev, loss, rx_loss, drop_next, delay);
    Py_RETURN_NONE;
}

static PyObject *Device_reseed(DeviceObject *self, PyObject *args) {
    unsigned long long seed;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "K", &seed)) return NULL;
    sr_reseed(self->dev, seed);
    Py_RETURN_NONE;
}

static PyObject *Device_events(DeviceObject *self, PyObject *unused) {
    CHECK_OPEN(self);
    sr_event ev[256];
    int n = sr_take_events(self->dev, ev, 256);
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(iiI)", ev[i].type, ev[i].port, ev[i].qpn);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *Device_stats(DeviceObject *self, PyObject *unused) {
    CHECK_OPEN(self);
    sr_dev *d = self->dev;
    pthread_mutex_lock(&d->lock);
    sr_devstats s = d->st;
    pthread_mutex_unlock(&d->lock);
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsKsKsKsKsKsK}", "tx_frames", s.tx_frames, "rx_frames", s.rx_frames, "tx_dropped",
                         s.tx_dropped, "rx_dropped", s.rx_dropped, "icrc_errors", s.icrc_errors, "bad_frames", s.bad_frames, "unknown_qp",
                         s.unknown_qp, "internal_errors", s.internal_errors, "tap_dropped", s.tap_dropped, "tx_batches",
                         s.tx_batches, "rx_batches", s.rx_batches, "tx_gso_sends", s.tx_gso_sends, "rx_gro_datagrams", s.rx_gro_datagrams,
                         "psn_out_of_window", s.psn_out_of_window, "suspect_ignored", s.suspect_ignored);
    /* (gso itself is reported by the Python side, which decides it) */
}

/* ------------------------------------------------------------------ the tap */

static PyObject *Device_tap_enable(DeviceObject *self, PyObject *args) {
    int on;
    unsigned int write_snap = 0;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "p|I", &on, &write_snap)) return NULL;
    sr_tap_enable(self->dev, on, write_snap);
    Py_RETURN_NONE;
}

/* Wait up to timeout seconds (GIL released) for tapped frames, then return them as
 * (direction, timestamp_ns, src_be, sport, dst_be, dport, frame bytes, reason or None). */
static PyObject *Device_tap_read(DeviceObject *self, PyObject *args) {
    double timeout;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "d", &timeout)) return NULL;
    sr_dev *d = self->dev;
    size_t cap = 4u << 20;
    uint8_t *buf = PyMem_Malloc(cap);
    if (!buf) return PyErr_NoMemory();
    size_t got;
    Py_BEGIN_ALLOW_THREADS got = sr_tap_read(d, buf, cap);
    if (!got && timeout > 0) {
        struct pollfd p = {d->tapfd, POLLIN, 0};
        poll(&p, 1, (int)(timeout * 1000));
        got = sr_tap_read(d, buf, cap);
    }
    Py_END_ALLOW_THREADS PyObject *out = PyList_New(0);
    if (!out) {
        PyMem_Free(buf);
        return NULL;
    }
    static PyObject *tx_text, *rx_text;
    if (!tx_text) {
        tx_text = PyUnicode_InternFromString("tx");
        rx_text = PyUnicode_InternFromString("rx");
    }
    for (size_t pos = 0; pos < got;) {
        sr_taprec *r = (sr_taprec *)(buf + pos);
        const char *reason = (const char *)(r + 1);
        PyObject *items[9];
        items[0] = r->dir ? rx_text : tx_text;
        Py_INCREF(items[0]);
        items[1] = PyLong_FromLongLong(r->ts_ns);
        items[2] = ip_text(r->src);
        items[3] = PyLong_FromLong(r->sport);
        items[4] = ip_text(r->dst);
        items[5] = PyLong_FromLong(r->dport);
        items[6] = PyBytes_FromStringAndSize(reason + r->reason_len, r->len);
        items[7] = r->reason_len ? PyUnicode_DecodeUTF8(reason, r->reason_len, "replace") : (Py_INCREF(Py_None), Py_None);
        items[8] = r->orig != r->len ? PyLong_FromUnsignedLong(r->orig) : (Py_INCREF(Py_None), Py_None);
        PyObject *t = NULL;
        int ok = 1;
        for (int i = 0; i < 9; i++) ok = ok && items[i];
        if (ok) t = frame_class ? PyType_GenericAlloc(frame_class, 9) : PyTuple_New(9);
        if (!t) {
            for (int i = 0; i < 9; i++) Py_XDECREF(items[i]);
            Py_DECREF(out);
            PyMem_Free(buf);
            return NULL;
        }
        for (int i = 0; i < 9; i++) PyTuple_SET_ITEM(t, i, items[i]);
        if (PyList_Append(out, t) < 0) {
            Py_DECREF(t);
            Py_DECREF(out);
            PyMem_Free(buf);
            return NULL;
        }
        Py_DECREF(t);
        pos += r->size;
    }
    PyMem_Free(buf);
    return out;
}

/* Wait up to timeout seconds (GIL released) for tapped frames, then return them as one
 * bytes object of raw records (the layout of sr_taprec, little-endian: size u32 @0, direction
 * u8 @4 (0 tx, 1 rx), reason length u8 @5, sport u16 @6, dport u16 @8, src u32 @12 and dst u32
 * @16 in network order, captured length u32 @20, length on the wire u32 @24, timestamp ns i64
 * @32, then the reason text and the frame; each record padded to 8 bytes). A recorder in C
 * (native/eventenc.c) takes it whole: no Python object per frame. */
static PyObject *Device_tap_read_raw(DeviceObject *self, PyObject *args) {
    double timeout;
    CHECK_OPEN(self);
    if (!PyArg_ParseTuple(args, "d", &timeout)) return NULL;
    sr_dev *d = self->dev;
    size_t cap = 4u << 20, avail;
    Py_BEGIN_ALLOW_THREADS avail = sr_tap_avail(d);
    if (!avail && timeout > 0) {
        struct pollfd p = {d->tapfd, POLLIN, 0};
        poll(&p, 1, (int)(timeout * 1000));
        avail = sr_tap_avail(d);
    }
    Py_END_ALLOW_THREADS if (!avail) return PyBytes_FromStringAndSize(NULL, 0);
    /* straight into the bytes object handed out: one copy, sized to what waits */
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(avail < cap ? avail : cap));
    if (!out) return NULL;
    size_t got;
    Py_BEGIN_ALLOW_THREADS got = sr_tap_read(d, (uint8_t *)PyBytes_AS_STRING(out), (size_t)PyBytes_GET_SIZE(out));
    Py_END_ALLOW_THREADS if (got < (size_t)PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, (Py_ssize_t)got) < 0) return NULL;
    return out;
}

/* ICRC of a RoCEv2 UDP payload (BTH .. pad), for the tests' cross-check with stack.wire.roce */
static PyObject *mod_icrc(PyObject *m, PyObject *args) {
    unsigned int src, dst;
    unsigned short sport, dport;
    Py_buffer ib;
    if (!PyArg_ParseTuple(args, "IIHHy*", &src, &dst, &sport, &dport, &ib)) return NULL;
    uint32_t crc = ib.len >= 5 ? sr_icrc(src, dst, sport, dport, ib.buf, ib.len) : 0;
    PyBuffer_Release(&ib);
    return PyLong_FromUnsignedLong(crc);
}

static PyMethodDef Device_methods[] = {
    {"close", (PyCFunction)Device_close, METH_NOARGS, "stop the engine thread and free everything"},
    {"reg_mr", (PyCFunction)Device_reg_mr, METH_VARARGS, "reg_mr(lkey, rkey, addr, buffer, access, pd)"},
    {"dereg_mr", (PyCFunction)Device_dereg_mr, METH_VARARGS, "dereg_mr(lkey) -> bool"},
    {"cq_create", (PyCFunction)Device_cq_create, METH_VARARGS, "cq_create(depth) -> id"},
    {"cq_fd", (PyCFunction)Device_cq_fd, METH_VARARGS, "cq_fd(id) -> eventfd, readable while completions wait"},
    {"cq_len", (PyCFunction)Device_cq_len, METH_VARARGS, "cq_len(id) -> (waiting, overruns)"},
    {"cq_poll", (PyCFunction)Device_cq_poll, METH_VARARGS, "cq_poll(id, max) -> [(wr_id, status, opcode, qp_num, byte_len, imm, vendor_err)]"},
    {"cq_destroy", (PyCFunction)Device_cq_destroy, METH_VARARGS, "cq_destroy(id)"},
    {"qp_create", (PyCFunction)Device_qp_create, METH_VARARGS, "qp_create(qpn, pd, send_cq, recv_cq, max_send_wr, max_recv_wr, max_send_sge, max_recv_sge, max_inline)"},
    {"qp_init", (PyCFunction)Device_qp_init, METH_VARARGS, "qp_init(qpn, access)"},
    {"qp_rtr", (PyCFunction)Device_qp_rtr, METH_VARARGS, "qp_rtr(qpn, remote_qpn, remote_psn, remote_ip_be, path_mtu, timeout, retry_cnt, rnr_retry, min_rnr_timer)"},
    {"qp_rts", (PyCFunction)Device_qp_rts, METH_VARARGS, "qp_rts(qpn, remote_qpn, local_psn, timeout, retry_cnt, rnr_retry, min_rnr_timer)"},
    {"qp_to_error", (PyCFunction)Device_qp_to_error, METH_VARARGS, "qp_to_error(qpn)"},
    {"qp_destroy", (PyCFunction)Device_qp_destroy, METH_VARARGS, "qp_destroy(qpn)"},
    {"qp_state", (PyCFunction)Device_qp_state, METH_VARARGS, "qp_state(qpn) -> ibv_qp_state"},
    {"qp_stats", (PyCFunction)Device_qp_stats, METH_VARARGS, "qp_stats(qpn) -> dict"},
    {"post_send", (PyCFunction)Device_post_send, METH_VARARGS, "post_send(qpn, [(wr_id, opcode, flags, remote_addr, rkey, imm, ((lkey, off, len), ...))])"},
    {"post_recv", (PyCFunction)Device_post_recv, METH_VARARGS, "post_recv(qpn, [(wr_id, ((lkey, off, len), ...))])"},
    {"rx_poll", (PyCFunction)Device_rx_poll, METH_VARARGS, "rx_poll(rounds=4) -> ACKs held: take and process waiting frames on this thread; their ACKs wait for the next send or flush_acks()"},
    {"fileno", (PyCFunction)Device_fileno, METH_NOARGS, "the UDP socket (readable when frames wait)"},
    {"flush_acks", (PyCFunction)Device_flush_acks, METH_NOARGS, "send the ACKs rx_poll held back -> how many"},
    {"acks_held", (PyCFunction)Device_acks_held, METH_NOARGS, "ACKs rx_poll holds back for the next transmission"},
    {"set_port", (PyCFunction)Device_set_port, METH_VARARGS, "set_port(up)"},
    {"set_faults", (PyCFunction)Device_set_faults, METH_VARARGS, "set_faults(loss, rx_loss, drop_next, delay)"},
    {"set_gso", (PyCFunction)Device_set_gso, METH_VARARGS, "set_gso(on): send runs of frames as UDP GSO batches, or frame by frame"},
    {"reseed", (PyCFunction)Device_reseed, METH_VARARGS, "reseed(seed)"},
    {"events", (PyCFunction)Device_events, METH_NOARGS, "events() -> [(type, port, qpn)]"},
    {"stats", (PyCFunction)Device_stats, METH_NOARGS, "stats() -> dict"},
    {"tap_enable", (PyCFunction)Device_tap_enable, METH_VARARGS, "tap_enable(on, write_snap=0): RDMA WRITE frames keep write_snap bytes (0: all)"},
    {"tap_read_raw", (PyCFunction)Device_tap_read_raw, METH_VARARGS, "tap_read_raw(timeout) -> bytes of raw tap records (see module.c)"},
    {"tap_read", (PyCFunction)Device_tap_read, METH_VARARGS, "tap_read(timeout) -> [FrameRecord(dir, ts_ns, src, sport, dst, dport, frame, reason, length)]"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DeviceType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "native._softroce.Device",
    .tp_basicsize = sizeof(DeviceObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Device(socket_fd, ip_be, mtu_bytes, seed, gso=False): a soft RoCEv2 device's compiled engine",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Device_init,
    .tp_dealloc = (destructor)Device_dealloc,
    .tp_methods = Device_methods,
};

static PyObject *mod_crc32(PyObject *m, PyObject *args) {
    Py_buffer b;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &b, &crc)) return NULL;
    uint32_t r = sr_crc32(crc, b.buf, b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(r);
}

static PyObject *mod_set_frame_class(PyObject *m, PyObject *cls) {
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "the frame class must be a tuple subclass of 9 fields (FrameRecord)");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(frame_class, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

static PyMethodDef mod_methods[] = {
    {"set_frame_class", mod_set_frame_class, METH_O, "set_frame_class(FrameRecord): what tap_read makes of each frame"},
    {"icrc", mod_icrc, METH_VARARGS, "icrc(src_be, dst_be, sport, dport, ib) -> the ICRC as a little-endian integer"},
    {"crc32", mod_crc32, METH_VARARGS, "crc32(data, crc=0): zlib.crc32, folded with PCLMULQDQ where the CPU has it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_softroce", "The compiled soft RoCEv2 engine.", -1, mod_methods};

PyMODINIT_FUNC PyInit__softroce(void) {
    if (PyType_Ready(&DeviceType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&DeviceType);
    if (PyModule_AddObject(m, "Device", (PyObject *)&DeviceType) < 0) {
        Py_DECREF(&DeviceType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "WINDOW", SR_WINDOW);
    PyModule_AddIntConstant(m, "TAP_RECORD_HEADER", (long)sizeof(sr_taprec));
    PyModule_AddIntConstant(m, "CRC_FOLDED", sr_crc32_selftest());
    PyModule_AddIntConstant(m, "CRC_SMALL", sr_crc32_small()); /* after the self-test, which may switch them off */
    PyModule_AddIntConstant(m, "ACK_EVERY", SR_ACK_EVERY);
    return m;
}
