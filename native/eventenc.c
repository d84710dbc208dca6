/* _eventenc: events that cost almost nothing (issue #12 item 4).
 *
 * Three fast paths, each the twin of pure Python that gives byte-identical results:
 *
 *   to_json(event) / to_json_line(event) / record(event, header)
 *       the canonical JSON form of stack/events.py (to_json: sorted keys, compact
 *       separators, t and float fields rounded to 9 digits, ids always present, bytes as
 *       lower-case hex, enums as their values, ASCII only). Anything this code does not
 *       handle exactly as json.dumps would (a subclass of str or dict, a memoryview, a
 *       non-str key, a reserved field name, ...) is handed to the Python twin given to
 *       configure(), so results (and errors) are the twin's by construction.
 *
 *   Spool
 *       the recorder's pending timeline (twin: dissectors/spool.py): entries (pcapng
 *       enhanced packet blocks to be) sorted by (timestamp, sequence), held back until
 *       they are old enough, then written as one bytes object. ingest() turns a batch of
 *       events and soft-RoCE frames into entries in C; what needs Python (a TCP flow, a
 *       comment, anything malformed) comes back as a "special" for the recorder. take()
 *       sorts, merges and builds the blocks with the interpreter lock released.
 *
 *   drain(deque)
 *       everything in a deque, as a list, atomically with respect to other threads.
 *
 * Built by native/build_eventenc.sh into native/build/; loaded by native/eventenc.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OK 0
#define UNSUP 1 /* not handled here: the Python twin decides (and any error is cleared) */
#define MAX_DEPTH 64
#define MAX_FIELDS 64
#define SEQ_STEP 8 /* entries derived from an item (TCP segments) use the seqs just below it */

/* ------------------------------------------------------------------ configuration */

static PyObject *EventType;  /* stack.events.Event */
static PyObject *EnumType;   /* enum.Enum */
static PyObject *Fallback;   /* the Python to_json */
static Py_ssize_t OFF[7];    /* slot offsets of Event: t kind host lgr link conn fields */
static const char *SLOT_NAMES[7] = {"t", "kind", "host", "lgr", "link", "conn", "fields"};
static PyObject *S_value, *S_name, *S_round, *S_dir, *S_rx, *NINE;
static PyObject *S_direction, *S_timestamp_ns, *S_src, *S_sport, *S_dst, *S_dport, *S_payload, *S_dropped, *S_length;
static PyObject *ID_NAMES[6]; /* "t" "kind" "host" "lgr" "link" "conn" */

enum { ID_T = -1, ID_KIND = -2, ID_HOST = -3, ID_LGR = -4, ID_LINK = -5, ID_CONN = -6 };

/* ------------------------------------------------------------------ growable buffer */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    int heap;
    int nonascii; /* something from the twin was not ASCII (it always is: ensure_ascii) */
    char inl[1024];
} Buf;

static void buf_init(Buf *b) {
    b->p = b->inl;
    b->len = 0;
    b->cap = sizeof b->inl;
    b->heap = 0;
    b->nonascii = 0;
}

static void buf_free(Buf *b) {
    if (b->heap)
        PyMem_RawFree(b->p);
    buf_init(b);
}

static int buf_grow(Buf *b, Py_ssize_t need) {
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + need)
        cap *= 2;
    char *np = PyMem_RawMalloc(cap);
    if (np == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(np, b->p, b->len);
    if (b->heap)
        PyMem_RawFree(b->p);
    b->p = np;
    b->cap = cap;
    b->heap = 1;
    return 0;
}

#define RESERVE(b, n) ((b)->len + (Py_ssize_t)(n) <= (b)->cap ? 0 : buf_grow((b), (n)))

static inline int put(Buf *b, const char *s, Py_ssize_t n) {
    if (RESERVE(b, n))
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static inline int putc_(Buf *b, char c) {
    if (RESERVE(b, 1))
        return -1;
    b->p[b->len++] = c;
    return 0;
}

/* ------------------------------------------------------------------ JSON scalars */

static const char HEX[] = "0123456789abcdef";

static int put_escaped(Buf *b, Py_UCS4 c) {
    char tmp[12];
    int n = 0;
    tmp[n++] = '\\';
    switch (c) {
    case '\\': tmp[n++] = '\\'; break;
    case '"': tmp[n++] = '"'; break;
    case '\b': tmp[n++] = 'b'; break;
    case '\f': tmp[n++] = 'f'; break;
    case '\n': tmp[n++] = 'n'; break;
    case '\r': tmp[n++] = 'r'; break;
    case '\t': tmp[n++] = 't'; break;
    default:
        if (c >= 0x10000) { /* a surrogate pair, as json.dumps writes it */
            Py_UCS4 v = c - 0x10000;
            Py_UCS4 hi = 0xd800 | ((v >> 10) & 0x3ff);
            tmp[n++] = 'u';
            tmp[n++] = HEX[(hi >> 12) & 0xf];
            tmp[n++] = HEX[(hi >> 8) & 0xf];
            tmp[n++] = HEX[(hi >> 4) & 0xf];
            tmp[n++] = HEX[hi & 0xf];
            tmp[n++] = '\\';
            c = 0xdc00 | (v & 0x3ff);
        }
        tmp[n++] = 'u';
        tmp[n++] = HEX[(c >> 12) & 0xf];
        tmp[n++] = HEX[(c >> 8) & 0xf];
        tmp[n++] = HEX[(c >> 4) & 0xf];
        tmp[n++] = HEX[c & 0xf];
    }
    return put(b, tmp, n);
}

#define PLAIN(c) ((c) >= ' ' && (c) <= '~' && (c) != '\\' && (c) != '"')

/* An exact str, as json.dumps(ensure_ascii=True) writes it. */
static int enc_str(Buf *b, PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), i = 0;
    if (PyUnicode_IS_ASCII(s)) {
        const unsigned char *d = PyUnicode_1BYTE_DATA(s);
        if (RESERVE(b, n + 2))
            return -1;
        char *o = b->p + b->len + 1;
        for (; i < n && PLAIN(d[i]); i++)
            o[i] = (char)d[i];
        b->p[b->len] = '"';
        b->len += 1 + i;
        if (i == n)
            return putc_(b, '"');
        for (; i < n; i++) {
            unsigned char c = d[i];
            if (PLAIN(c) ? putc_(b, (char)c) : put_escaped(b, c))
                return -1;
        }
        return putc_(b, '"');
    }
    int kind = PyUnicode_KIND(s);
    const void *d = PyUnicode_DATA(s);
    if (putc_(b, '"'))
        return -1;
    for (; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, d, i);
        if (PLAIN(c) ? putc_(b, (char)c) : put_escaped(b, c))
            return -1;
    }
    return putc_(b, '"');
}

static int put_u64(Buf *b, uint64_t v, int neg) {
    char tmp[24];
    int n = sizeof tmp;
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg)
        tmp[--n] = '-';
    return put(b, tmp + n, sizeof tmp - n);
}

/* An exact int: its decimal digits (int.__repr__, as json.dumps). */
static int enc_int(Buf *b, PyObject *v) {
#if PY_VERSION_HEX < 0x030C0000
    Py_ssize_t size = Py_SIZE(v);
    if (size == 0)
        return putc_(b, '0');
    if (size == 1 || size == -1)
        return put_u64(b, ((PyLongObject *)v)->ob_digit[0], size < 0);
#endif
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return UNSUP;
    if (!overflow)
        return put_u64(b, x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x, x < 0);
    PyObject *s = PyLong_Type.tp_repr(v);
    if (s == NULL)
        return UNSUP; /* e.g. past sys.get_int_max_str_digits(): the twin raises the same */
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    int r = u == NULL ? UNSUP : put(b, u, n);
    Py_DECREF(s);
    return r;
}

/* A float as json.dumps writes it: float.__repr__, or NaN / Infinity / -Infinity. */
static int enc_float_repr(Buf *b, double x) {
    if (isnan(x))
        return put(b, "NaN", 3);
    if (isinf(x))
        return x > 0 ? put(b, "Infinity", 8) : put(b, "-Infinity", 9);
    char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL)
        return UNSUP;
    int r = put(b, s, strlen(s));
    PyMem_Free(s);
    return r;
}

/* json.dumps(round(x, 9)) for an exact float.
 *
 * Fast path, exact: x = m * 2^e, so N = x * 10^9 rounded half-even (what round() does
 * with the exact binary value) is computed in 128-bit integers. When 10^5 <= N < 10^15
 * the result has at most 15 significant digits, so the shortest repr of the double
 * nearest N / 10^9 is those digits (two decimals of <= 15 digits never share a
 * double), and repr writes them in fixed notation (1e-4 <= |r| < 1e16): "<int>.<frac>"
 * with the fraction's trailing zeros removed, at least one digit. N == 0 is 0.0 with
 * x's sign. Anything else asks Python: round(x, 9), then float.__repr__. */
static int enc_float_rounded(Buf *b, PyObject *v) {
    double x = PyFloat_AS_DOUBLE(v);
    if (!isfinite(x))
        return enc_float_repr(b, x);
    uint64_t bits;
    memcpy(&bits, &x, 8);
    int neg = (int)(bits >> 63);
    int exp = (int)((bits >> 52) & 0x7ff);
    uint64_t mant = bits & ((1ULL << 52) - 1);
    unsigned __int128 q;
    if (exp == 0) {
        q = 0; /* zero or subnormal: far below 0.5e-9 */
    } else {
        int e = exp - 1075;
        uint64_t m = mant | (1ULL << 52);
        if (e >= 0)
            goto slow;
        int s = -e;
        unsigned __int128 p = (unsigned __int128)m * 1000000000u; /* < 2^83 */
        if (s >= 128) {
            q = 0;
        } else {
            q = p >> s;
            unsigned __int128 rem = p - (q << s), half = (unsigned __int128)1 << (s - 1);
            if (rem > half || (rem == half && (q & 1)))
                q++;
        }
    }
    if (q == 0)
        return neg ? put(b, "-0.0", 4) : put(b, "0.0", 3);
    if (q < 100000 || q >= 1000000000000000ULL)
        goto slow;
    {
        uint64_t n = (uint64_t)q, ip = n / 1000000000u, fp = n % 1000000000u;
        char tmp[40];
        int len = 0;
        if (neg)
            tmp[len++] = '-';
        char digits[24];
        int nd = 0;
        do {
            digits[nd++] = (char)('0' + ip % 10);
            ip /= 10;
        } while (ip);
        while (nd)
            tmp[len++] = digits[--nd];
        tmp[len++] = '.';
        char frac[9];
        for (int i = 8; i >= 0; i--) {
            frac[i] = (char)('0' + fp % 10);
            fp /= 10;
        }
        int last = 8;
        while (last > 0 && frac[last] == '0')
            last--;
        memcpy(tmp + len, frac, last + 1);
        len += last + 1;
        return put(b, tmp, len);
    }
slow: {
    PyObject *r = PyObject_CallMethodOneArg(v, S_round, NINE);
    if (r == NULL)
        return UNSUP;
    double y = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (y == -1.0 && PyErr_Occurred())
        return UNSUP;
    return enc_float_repr(b, y);
}
}

static int enc_hex(Buf *b, const unsigned char *d, Py_ssize_t n) {
    if (RESERVE(b, 2 * n + 2))
        return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        *o++ = HEX[d[i] >> 4];
        *o++ = HEX[d[i] & 0xf];
    }
    *o = '"';
    b->len += 2 * n + 2;
    return 0;
}

/* ------------------------------------------------------------------ values (_plain, then json) */

static int enc_value(Buf *b, PyObject *v, int depth);

static int key_cmp(const void *a, const void *b) {
    /* two exact str (dict keys: never equal); PyUnicode_Compare cannot fail on them */
    return PyUnicode_Compare(((PyObject *const *)a)[0], ((PyObject *const *)b)[0]);
}

/* A nested dict: _plain makes its keys str(k) (we take only exact str keys), json sorts. */
static int enc_dict(Buf *b, PyObject *d, int depth) {
    Py_ssize_t n = PyDict_GET_SIZE(d);
    if (n == 0)
        return put(b, "{}", 2);
    PyObject *small[2 * 16];
    PyObject **kv = n <= 16 ? small : PyMem_RawMalloc(sizeof(PyObject *) * 2 * n);
    if (kv == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0, i = 0;
    PyObject *k, *val;
    int r = OK;
    while (PyDict_Next(d, &pos, &k, &val)) {
        if (i >= n || !PyUnicode_CheckExact(k)) {
            r = UNSUP;
            n = i;
            goto done;
        }
        Py_INCREF(k);
        Py_INCREF(val);
        kv[2 * i] = k;
        kv[2 * i + 1] = val;
        i++;
    }
    n = i;
    qsort(kv, n, 2 * sizeof(PyObject *), key_cmp);
    if ((r = putc_(b, '{')))
        goto done;
    for (i = 0; i < n; i++) {
        if ((i && (r = putc_(b, ','))) || (r = enc_str(b, kv[2 * i])) || (r = putc_(b, ':')) ||
            (r = enc_value(b, kv[2 * i + 1], depth)))
            goto done;
    }
    r = putc_(b, '}');
done:
    for (i = 0; i < n; i++) {
        Py_DECREF(kv[2 * i]);
        Py_DECREF(kv[2 * i + 1]);
    }
    if (kv != small)
        PyMem_RawFree(kv);
    return r;
}

static int enc_seq(Buf *b, PyObject *v, int depth) {
    int is_list = PyList_CheckExact(v);
    if (putc_(b, '['))
        return -1;
    for (Py_ssize_t i = 0;; i++) {
        Py_ssize_t n = is_list ? PyList_GET_SIZE(v) : PyTuple_GET_SIZE(v);
        if (i >= n)
            break;
        PyObject *item = is_list ? PyList_GET_ITEM(v, i) : PyTuple_GET_ITEM(v, i);
        Py_INCREF(item);
        int r = (i && putc_(b, ',')) ? -1 : enc_value(b, item, depth);
        Py_DECREF(item);
        if (r)
            return r;
    }
    return putc_(b, ']');
}

/* An enum member: _plain gives value.value when it is an int or str, else value.name;
 * json then writes that as it is (no second _plain). */
static int enc_enum(Buf *b, PyObject *v) {
    PyObject *val = PyObject_GetAttr(v, S_value);
    if (val == NULL)
        return UNSUP;
    int r;
    if (val == Py_True)
        r = put(b, "true", 4);
    else if (val == Py_False)
        r = put(b, "false", 5);
    else if (PyLong_CheckExact(val))
        r = enc_int(b, val);
    else if (PyUnicode_CheckExact(val))
        r = enc_str(b, val);
    else if (PyLong_Check(val) || PyUnicode_Check(val))
        r = UNSUP;
    else {
        PyObject *name = PyObject_GetAttr(v, S_name);
        r = name != NULL && PyUnicode_CheckExact(name) ? enc_str(b, name) : UNSUP;
        Py_XDECREF(name);
    }
    Py_DECREF(val);
    return r;
}

static int enc_value(Buf *b, PyObject *v, int depth) {
    PyTypeObject *tp = Py_TYPE(v);
    if (tp == &PyUnicode_Type)
        return enc_str(b, v);
    if (tp == &PyLong_Type)
        return enc_int(b, v);
    if (v == Py_None)
        return put(b, "null", 4);
    if (v == Py_True)
        return put(b, "true", 4);
    if (v == Py_False)
        return put(b, "false", 5);
    if (tp == &PyFloat_Type)
        return enc_float_rounded(b, v);
    if (tp == &PyBytes_Type)
        return enc_hex(b, (const unsigned char *)PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    if (tp == &PyByteArray_Type)
        return enc_hex(b, (const unsigned char *)PyByteArray_AS_STRING(v), PyByteArray_GET_SIZE(v));
    if (depth >= MAX_DEPTH)
        return UNSUP;
    if (tp == &PyDict_Type)
        return enc_dict(b, v, depth + 1);
    if (tp == &PyList_Type || tp == &PyTuple_Type)
        return enc_seq(b, v, depth + 1);
    if (PyBytes_Check(v) || PyByteArray_Check(v) || PyMemoryView_Check(v))
        return UNSUP;
    if (EnumType != NULL && PyType_IsSubtype(tp, (PyTypeObject *)EnumType))
        return enc_enum(b, v);
    return UNSUP;
}

/* The ids go to json as they are (no _plain). */
static int enc_id(Buf *b, PyObject *v) {
    if (v == Py_None)
        return put(b, "null", 4);
    if (PyUnicode_CheckExact(v))
        return enc_str(b, v);
    if (PyLong_CheckExact(v))
        return enc_int(b, v);
    if (v == Py_True)
        return put(b, "true", 4);
    if (v == Py_False)
        return put(b, "false", 5);
    return UNSUP;
}

/* ------------------------------------------------------------------ event shapes
 *
 * Events of one kind mostly have the same field names, created once as constants: the
 * order of the output keys (ids and fields, sorted) and their JSON prefixes are kept
 * per shape (the field keys, by identity, in dict order). */

typedef struct {
    Py_ssize_t n;      /* field keys */
    PyObject **keys;   /* n strong references, in dict order */
    int plan[MAX_FIELDS + 6];
    int pre_off[MAX_FIELDS + 6], pre_len[MAX_FIELDS + 6];
    char *pre;         /* '{"conn":' ',"dir":' ... */
    int refs;          /* the cache's and each user's */
} Shape;

#define NSHAPES 256
static Shape *shapes[NSHAPES];

static void shape_unref(Shape *s) {
    if (s == NULL || --s->refs > 0)
        return;
    for (Py_ssize_t i = 0; i < s->n; i++)
        Py_DECREF(s->keys[i]);
    PyMem_RawFree(s->keys);
    PyMem_RawFree(s->pre);
    PyMem_RawFree(s);
}

typedef struct {
    PyObject *name;
    int code;
} PlanItem;

static int plan_cmp(const void *a, const void *b) {
    return PyUnicode_Compare(((const PlanItem *)a)->name, ((const PlanItem *)b)->name);
}

static Shape *shape_build(PyObject **keys, Py_ssize_t n) {
    PlanItem items[MAX_FIELDS + 6];
    for (int i = 0; i < 6; i++) {
        items[i].name = ID_NAMES[i];
        items[i].code = -1 - i;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(keys[i]))
            return NULL;
        for (int j = 0; j < 6; j++)
            if (PyUnicode_Compare(keys[i], ID_NAMES[j]) == 0)
                return NULL; /* a reserved name: the twin raises ValueError */
        items[6 + i].name = keys[i];
        items[6 + i].code = (int)i;
    }
    int total = (int)n + 6;
    qsort(items, total, sizeof(PlanItem), plan_cmp);
    Shape *s = PyMem_RawCalloc(1, sizeof(Shape));
    if (s == NULL)
        return NULL;
    s->keys = PyMem_RawMalloc(sizeof(PyObject *) * (n ? n : 1));
    Buf pre;
    buf_init(&pre);
    int bad = s->keys == NULL;
    for (int i = 0; i < total && !bad; i++) {
        s->plan[i] = items[i].code;
        s->pre_off[i] = (int)pre.len;
        bad = putc_(&pre, i ? ',' : '{') || enc_str(&pre, items[i].name) || putc_(&pre, ':');
        s->pre_len[i] = (int)pre.len - s->pre_off[i];
    }
    if (!bad) {
        s->pre = PyMem_RawMalloc(pre.len);
        bad = s->pre == NULL;
        if (!bad)
            memcpy(s->pre, pre.p, pre.len);
    }
    buf_free(&pre);
    if (bad) {
        PyErr_Clear();
        PyMem_RawFree(s->keys);
        PyMem_RawFree(s);
        return NULL;
    }
    s->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(keys[i]);
        s->keys[i] = keys[i];
    }
    s->refs = 1;
    return s;
}

/* The shape of these keys, with a reference for the caller; NULL: not ours to encode. */
static Shape *shape_get(PyObject **keys, Py_ssize_t n) {
    uintptr_t h = (uintptr_t)n * 0x9e3779b97f4a7c15ULL;
    for (Py_ssize_t i = 0; i < n && i < 3; i++)
        h = (h ^ ((uintptr_t)keys[i] >> 4)) * 0x100000001b3ULL;
    unsigned slot = (unsigned)(h >> 24) % NSHAPES;
    Shape *s = shapes[slot];
    if (s != NULL && s->n == n) {
        Py_ssize_t i = 0;
        while (i < n && s->keys[i] == keys[i])
            i++;
        if (i == n) {
            s->refs++;
            return s;
        }
    }
    s = shape_build(keys, n);
    if (s == NULL)
        return NULL;
    Shape *old = shapes[slot];
    shapes[slot] = s;
    shape_unref(old);
    s->refs++;
    return s;
}

/* ------------------------------------------------------------------ events */

#define SLOT(ev, i) (*(PyObject **)((char *)(ev) + OFF[i]))

/* The canonical JSON of an Event into b; UNSUP when the twin must do it. */
static int enc_event_fast(Buf *b, PyObject *ev) {
    if (EventType == NULL || (PyObject *)Py_TYPE(ev) != EventType)
        return UNSUP;
    PyObject *ids[6];
    for (int i = 0; i < 6; i++)
        if ((ids[i] = SLOT(ev, i)) == NULL)
            return UNSUP;
    PyObject *fields = SLOT(ev, 6);
    if (fields == NULL || !PyDict_CheckExact(fields) || PyDict_GET_SIZE(fields) > MAX_FIELDS)
        return UNSUP;
    PyObject *keys[MAX_FIELDS], *vals[MAX_FIELDS];
    Py_ssize_t pos = 0, n = 0;
    PyObject *k, *v;
    while (PyDict_Next(fields, &pos, &k, &v) && n < MAX_FIELDS) {
        keys[n] = k;
        vals[n] = v;
        n++;
    }
    for (int i = 0; i < 6; i++)
        Py_INCREF(ids[i]);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(keys[i]);
        Py_INCREF(vals[i]);
    }
    int r = UNSUP;
    Shape *s = shape_get(keys, n);
    if (s == NULL)
        goto done;
    if (!PyUnicode_CheckExact(ids[1]))
        goto done;
    for (int i = 0; i < (int)n + 6; i++) {
        if ((r = put(b, s->pre + s->pre_off[i], s->pre_len[i])))
            goto done;
        int code = s->plan[i];
        if (code >= 0)
            r = enc_value(b, vals[code], 0);
        else if (code == ID_T)
            r = PyFloat_CheckExact(ids[0]) ? enc_float_rounded(b, ids[0]) : PyLong_CheckExact(ids[0]) ? enc_int(b, ids[0]) : UNSUP;
        else if (code == ID_KIND)
            r = enc_str(b, ids[1]);
        else
            r = enc_id(b, ids[-code - 1]);
        if (r)
            goto done;
    }
    r = putc_(b, '}');
done:
    shape_unref(s);
    for (int i = 0; i < 6; i++)
        Py_DECREF(ids[i]);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(keys[i]);
        Py_DECREF(vals[i]);
    }
    return r;
}

/* JSON of ev appended to b: fast, or through the Python twin. -1 with an exception set
 * when the twin raised (the event cannot be serialised). */
static int enc_event(Buf *b, PyObject *ev) {
    Py_ssize_t mark = b->len;
    int r = enc_event_fast(b, ev);
    if (r == OK)
        return OK;
    b->len = mark;
    PyErr_Clear();
    if (Fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_eventenc is not configured");
        return -1;
    }
    PyObject *s = PyObject_CallOneArg(Fallback, ev);
    if (s == NULL)
        return -1;
    if (!PyUnicode_Check(s)) {
        Py_DECREF(s);
        PyErr_SetString(PyExc_TypeError, "to_json returned a non-str");
        return -1;
    }
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    if (!PyUnicode_IS_ASCII(s))
        b->nonascii = 1;
    r = u == NULL ? -1 : put(b, u, n);
    Py_DECREF(s);
    return r;
}

static PyObject *str_from_buf(Buf *b) {
    if (b->nonascii)
        return PyUnicode_DecodeUTF8(b->p, b->len, "strict");
    PyObject *s = PyUnicode_New(b->len, 127);
    if (s != NULL)
        memcpy(PyUnicode_1BYTE_DATA(s), b->p, b->len);
    return s;
}

static PyObject *m_to_json(PyObject *mod, PyObject *ev) {
    Buf b;
    buf_init(&b);
    PyObject *r = enc_event(&b, ev) ? NULL : str_from_buf(&b);
    buf_free(&b);
    return r;
}

static PyObject *m_to_json_line(PyObject *mod, PyObject *ev) {
    Buf b;
    buf_init(&b);
    PyObject *r = enc_event(&b, ev) || putc_(&b, '\n') ? NULL : str_from_buf(&b);
    buf_free(&b);
    return r;
}

static PyObject *m_record(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "record(event, header: bytes)");
        return NULL;
    }
    Buf b;
    buf_init(&b);
    PyObject *r = NULL;
    if (!put(&b, PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1])) && !enc_event(&b, args[0]))
        r = PyBytes_FromStringAndSize(b.p, b.len);
    buf_free(&b);
    return r;
}

/* Bench helper: the shape cache's state is process-wide, this empties it. */
static PyObject *m_clear_shapes(PyObject *mod, PyObject *unused) {
    for (int i = 0; i < NSHAPES; i++) {
        Shape *s = shapes[i];
        shapes[i] = NULL;
        shape_unref(s);
    }
    Py_RETURN_NONE;
}

static PyObject *m_configure(PyObject *mod, PyObject *args) {
    PyObject *event_type, *enum_type, *fallback;
    if (!PyArg_ParseTuple(args, "O!O!O:configure", &PyType_Type, &event_type, &PyType_Type, &enum_type, &fallback))
        return NULL;
    Py_ssize_t off[7];
    for (int i = 0; i < 7; i++) {
        PyObject *d = PyObject_GetAttrString(event_type, SLOT_NAMES[i]);
        if (d == NULL)
            return NULL;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok)
            off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "configure: Event.%s is not a slot", SLOT_NAMES[i]);
            return NULL;
        }
    }
    memcpy(OFF, off, sizeof off);
    Py_INCREF(event_type);
    Py_INCREF(enum_type);
    Py_INCREF(fallback);
    Py_XSETREF(EventType, event_type);
    Py_XSETREF(EnumType, enum_type);
    Py_XSETREF(Fallback, fallback);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ LineWriter
 *
 * The base of stack.events.JsonlWriter: calling it writes to_json(event) + "\n" with
 * out.write when kinds is None or holds event.kind, and counts it in written. The twin
 * is stack.events._LineWriterPy. */

typedef struct {
    PyObject_HEAD
    PyObject *out, *write, *kinds;
    long long written;
    PyObject *dict;
} LineWriter;

static PyObject *S_write, *S_kind;

static int LineWriter_set_out(LineWriter *self, PyObject *out, void *unused) {
    if (out == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete out");
        return -1;
    }
    PyObject *w = PyObject_GetAttr(out, S_write);
    if (w == NULL)
        return -1;
    Py_INCREF(out);
    Py_XSETREF(self->out, out);
    Py_XSETREF(self->write, w);
    return 0;
}

static PyObject *LineWriter_get_out(LineWriter *self, void *unused) {
    PyObject *o = self->out ? self->out : Py_None;
    Py_INCREF(o);
    return o;
}

static int LineWriter_set_kinds(LineWriter *self, PyObject *kinds, void *unused) {
    PyObject *k = kinds ? kinds : Py_None;
    Py_INCREF(k);
    Py_XSETREF(self->kinds, k);
    return 0;
}

static PyObject *LineWriter_get_kinds(LineWriter *self, void *unused) {
    PyObject *k = self->kinds ? self->kinds : Py_None;
    Py_INCREF(k);
    return k;
}

static int LineWriter_init(LineWriter *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"out", "kinds", NULL};
    PyObject *out, *kinds = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:LineWriter", kwlist, &out, &kinds))
        return -1;
    self->written = 0;
    return LineWriter_set_out(self, out, NULL) || LineWriter_set_kinds(self, kinds, NULL) ? -1 : 0;
}

static PyObject *LineWriter_call(LineWriter *self, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) != 1 || (kw != NULL && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "a JsonlWriter takes one event");
        return NULL;
    }
    PyObject *ev = PyTuple_GET_ITEM(args, 0);
    if (self->write == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "JsonlWriter was not initialised");
        return NULL;
    }
    if (self->kinds != NULL && self->kinds != Py_None) {
        PyObject *kind = PyObject_GetAttr(ev, S_kind);
        if (kind == NULL)
            return NULL;
        int in = PySequence_Contains(self->kinds, kind);
        Py_DECREF(kind);
        if (in <= 0)
            return in < 0 ? NULL : (Py_INCREF(Py_None), Py_None);
    }
    Buf b;
    buf_init(&b);
    PyObject *line = enc_event(&b, ev) || putc_(&b, '\n') ? NULL : str_from_buf(&b);
    buf_free(&b);
    if (line == NULL)
        return NULL;
    PyObject *write = self->write;
    Py_INCREF(write);
    PyObject *r = PyObject_CallOneArg(write, line);
    Py_DECREF(write);
    Py_DECREF(line);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    self->written++;
    Py_RETURN_NONE;
}

static int LineWriter_traverse(LineWriter *self, visitproc visit, void *arg) {
    Py_VISIT(self->out);
    Py_VISIT(self->write);
    Py_VISIT(self->kinds);
    Py_VISIT(self->dict);
    return 0;
}

static int LineWriter_clear(LineWriter *self) {
    Py_CLEAR(self->out);
    Py_CLEAR(self->write);
    Py_CLEAR(self->kinds);
    Py_CLEAR(self->dict);
    return 0;
}

static void LineWriter_dealloc(LineWriter *self) {
    PyObject_GC_UnTrack(self);
    LineWriter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef LineWriter_members[] = {
    {"written", T_LONGLONG, offsetof(LineWriter, written), 0, "lines written"},
    {NULL},
};

static PyGetSetDef LineWriter_getset[] = {
    {"out", (getter)LineWriter_get_out, (setter)LineWriter_set_out, "where the lines go (its write method)", NULL},
    {"kinds", (getter)LineWriter_get_kinds, (setter)LineWriter_set_kinds, "the kinds written, or None for all", NULL},
    {NULL},
};

static PyTypeObject LineWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_eventenc.LineWriter",
    .tp_basicsize = sizeof(LineWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Write each event it is called with as one canonical JSON line (twin: stack.events._LineWriterPy).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)LineWriter_init,
    .tp_dealloc = (destructor)LineWriter_dealloc,
    .tp_traverse = (traverseproc)LineWriter_traverse,
    .tp_clear = (inquiry)LineWriter_clear,
    .tp_call = (ternaryfunc)LineWriter_call,
    .tp_members = LineWriter_members,
    .tp_getset = LineWriter_getset,
    .tp_dictoffset = offsetof(LineWriter, dict),
};

/* ------------------------------------------------------------------ drain */

static PyObject *m_drain(PyObject *mod, PyObject *dq) {
    /* list(dq) and dq.clear() run no Python code (the items stay referenced by the list),
     * so no other thread runs between them: nothing appended meanwhile is lost. */
    PyObject *items = PySequence_List(dq);
    if (items == NULL)
        return NULL;
    if (PyList_GET_SIZE(items)) {
        PyObject *r = PyObject_CallMethod(dq, "clear", NULL);
        if (r == NULL) {
            Py_DECREF(items);
            return NULL;
        }
        Py_DECREF(r);
    }
    return items;
}

/* ------------------------------------------------------------------ frame headers */

/* Strict dotted quad (what ipaddress.IPv4Address accepts, or less). */
static int parse_ipv4(PyObject *s, unsigned char out[4]) {
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s))
        return -1;
    const char *p = (const char *)PyUnicode_1BYTE_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), i = 0;
    for (int part = 0; part < 4; part++) {
        if (part) {
            if (i >= n || p[i] != '.')
                return -1;
            i++;
        }
        Py_ssize_t start = i;
        unsigned v = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9' && i - start < 3)
            v = v * 10 + (unsigned)(p[i++] - '0');
        if (i == start || v > 255 || (i - start > 1 && p[start] == '0'))
            return -1;
        out[part] = (unsigned char)v;
    }
    return i == n ? 0 : -1;
}

#define FRAME_HDR 42

/* Ethernet (MACs 02:00:<ip>), IPv4 (DF, TTL 64, id 0, checksum), UDP (no checksum):
 * the twin of stack.wire.inet.ipv4_udp_frame as the recorder calls it. */
static void frame_header(unsigned char *h, const unsigned char src[4], const unsigned char dst[4], unsigned sport, unsigned dport,
                         size_t plen) {
    h[0] = 2, h[1] = 0, memcpy(h + 2, dst, 4);
    h[6] = 2, h[7] = 0, memcpy(h + 8, src, 4);
    h[12] = 0x08, h[13] = 0x00;
    unsigned char *ip = h + 14;
    unsigned total = 28 + (unsigned)plen;
    ip[0] = 0x45, ip[1] = 0, ip[2] = total >> 8, ip[3] = total & 0xff;
    ip[4] = 0, ip[5] = 0, ip[6] = 0x40, ip[7] = 0, ip[8] = 64, ip[9] = 17, ip[10] = 0, ip[11] = 0;
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, dst, 4);
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2)
        sum += (uint32_t)(ip[i] << 8 | ip[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    sum = ~sum & 0xffff;
    ip[10] = sum >> 8, ip[11] = sum & 0xff;
    unsigned char *udp = h + 34;
    unsigned ulen = 8 + (unsigned)plen;
    udp[0] = sport >> 8, udp[1] = sport & 0xff, udp[2] = dport >> 8, udp[3] = dport & 0xff;
    udp[4] = ulen >> 8, udp[5] = ulen & 0xff, udp[6] = 0, udp[7] = 0;
}

static int port_of(PyObject *v, unsigned *out) {
    if (!PyLong_CheckExact(v))
        return -1;
    long x = PyLong_AsLong(v);
    if (x < 0 || x > 65535) {
        PyErr_Clear();
        return -1;
    }
    *out = (unsigned)x;
    return 0;
}

static PyObject *m_frame_header(PyObject *mod, PyObject *args) {
    PyObject *src, *dst, *sp, *dp;
    Py_ssize_t plen;
    if (!PyArg_ParseTuple(args, "OOOOn", &src, &dst, &sp, &dp, &plen))
        return NULL;
    unsigned char s[4], d[4], h[FRAME_HDR];
    unsigned sport, dport;
    if (parse_ipv4(src, s) || parse_ipv4(dst, d) || port_of(sp, &sport) || port_of(dp, &dport) || plen < 0 || plen > 65535 - 28)
        Py_RETURN_NONE; /* not ours: the Python path decides */
    frame_header(h, s, d, sport, dport, (size_t)plen);
    return PyBytes_FromStringAndSize((const char *)h, FRAME_HDR);
}

/* The lookup key of a soft-RoCE frame: the SEND payload, as roce.decode_packet cuts it
 * from the frame without its ICRC. Offsets within payload; -1 when none. */
static void send_key(const unsigned char *p, Py_ssize_t plen, int32_t *off, int32_t *len) {
    *off = -1, *len = 0;
    if (plen < 1 || !(p[0] == 0x00 || p[0] == 0x04 || p[0] == 0x05))
        return;
    Py_ssize_t dlen = plen - 4; /* payload[:-4] */
    if (dlen < 0)
        dlen = 0;
    Py_ssize_t start = 12 + (p[0] == 0x05 ? 4 : 0);
    if (dlen < start)
        return;
    Py_ssize_t pad = (p[1] >> 4) & 3;
    if (dlen - start < pad)
        return;
    *off = (int32_t)start;
    *len = (int32_t)(dlen - pad - start);
}

/* ------------------------------------------------------------------ the spool */

typedef struct Chunk {
    size_t used, cap, live;
    char mem[];
} Chunk;

typedef struct {
    int64_t ts;
    uint64_t seq;
    PyObject *ref;      /* bytes after the arena part (a frame's payload, Python's data), or NULL */
    PyObject *comments; /* list of str, or NULL */
    Chunk *chunk;       /* arena part: chunk->mem[off, off+len) */
    uint32_t off, len;
    int32_t key_off, key_len; /* lookup key within the whole data; -1: none */
    uint32_t iface;
    uint32_t cut;       /* a frame's bytes the tap cut off (its snap length): the block's original length adds them */
} Entry;

typedef struct {
    PyObject_HEAD
    Entry *pend;       /* sorted by (ts, seq), left over from earlier takes */
    Py_ssize_t npend, cappend;
    Entry *inc;        /* added since the last take, in any order */
    Py_ssize_t ninc, capinc;
    Chunk *cur;
    Chunk *spare[48];  /* emptied chunks kept for reuse: no fresh pages (page faults) in steady state; 48 MiB
                        * covers the hold window (0.2 s) of every frame of a 2 GB/s bulk */
    int nspare;
    uint64_t seq;
    PyObject *header;  /* bytes before an event's JSON (the exported-PDU tags) */
    uint32_t frame_iface, event_iface;
    int64_t offset_ns;
    PyObject *special_kinds, *message_kinds;
    int busy;
} Spool;

#define CHUNK_SIZE (1 << 20)

static Chunk *chunk_new(Spool *sp) {
    if (sp->nspare)
        return sp->spare[--sp->nspare];
    Chunk *c = PyMem_RawMalloc(sizeof(Chunk) + CHUNK_SIZE);
    if (c == NULL)
        return NULL;
    c->cap = CHUNK_SIZE;
    return c;
}

static void chunk_free(Spool *sp, Chunk *c) {
    if (c->cap == CHUNK_SIZE && sp->nspare < (int)(sizeof sp->spare / sizeof sp->spare[0]))
        sp->spare[sp->nspare++] = c;
    else
        PyMem_RawFree(c);
}

static char *arena_alloc(Spool *sp, size_t n, Chunk **where, uint32_t *off) {
    Chunk *c = sp->cur;
    if (c != NULL && c->live == 0)
        c->used = 0; /* everything in it was written: start over */
    if (n > CHUNK_SIZE / 4) { /* a big one: a chunk of its own, the current one stays */
        Chunk *big = PyMem_RawMalloc(sizeof(Chunk) + n);
        if (big == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        big->used = n, big->cap = n, big->live = 1;
        *where = big, *off = 0;
        return big->mem;
    }
    if (c == NULL || c->used + n > c->cap) { /* c (if any) still has live entries: they free it */
        Chunk *nc = chunk_new(sp);
        if (nc == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        nc->used = 0, nc->live = 0;
        sp->cur = c = nc;
    }
    char *p = c->mem + c->used;
    *off = (uint32_t)c->used;
    c->used += n;
    c->live++;
    *where = c;
    return p;
}

static void chunk_release(Spool *sp, Chunk *c) {
    if (c == NULL)
        return;
    if (--c->live == 0 && c != sp->cur)
        chunk_free(sp, c);
}

static int inc_push(Spool *sp, Entry *e) {
    if (sp->ninc == sp->capinc) {
        Py_ssize_t cap = sp->capinc ? sp->capinc * 2 : 1024;
        Entry *n = PyMem_RawRealloc(sp->inc, sizeof(Entry) * cap);
        if (n == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        sp->inc = n, sp->capinc = cap;
    }
    sp->inc[sp->ninc++] = *e;
    return 0;
}

static void entry_clear(Spool *sp, Entry *e) {
    Py_CLEAR(e->ref);
    Py_CLEAR(e->comments);
    chunk_release(sp, e->chunk);
    e->chunk = NULL;
}

static int Spool_init(Spool *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"header", "frame_iface", "event_iface", "offset_ns", "special_kinds", "message_kinds", NULL};
    PyObject *header, *special, *message;
    unsigned int fi, ei;
    long long off;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!IILOO:Spool", kwlist, &PyBytes_Type, &header, &fi, &ei, &off, &special, &message))
        return -1;
    if (!PyFrozenSet_Check(special) || !PyFrozenSet_Check(message)) {
        PyErr_SetString(PyExc_TypeError, "Spool: special_kinds and message_kinds are frozensets");
        return -1;
    }
    Py_INCREF(header);
    Py_INCREF(special);
    Py_INCREF(message);
    Py_XSETREF(self->header, header);
    Py_XSETREF(self->special_kinds, special);
    Py_XSETREF(self->message_kinds, message);
    self->frame_iface = fi, self->event_iface = ei, self->offset_ns = off;
    return 0;
}

static void Spool_dealloc(Spool *self) {
    for (Py_ssize_t i = 0; i < self->npend; i++)
        entry_clear(self, &self->pend[i]);
    for (Py_ssize_t i = 0; i < self->ninc; i++)
        entry_clear(self, &self->inc[i]);
    PyMem_RawFree(self->pend);
    PyMem_RawFree(self->inc);
    if (self->cur != NULL)
        PyMem_RawFree(self->cur); /* live entries were all released above */
    while (self->nspare)
        PyMem_RawFree(self->spare[--self->nspare]);
    Py_XDECREF(self->header);
    Py_XDECREF(self->special_kinds);
    Py_XDECREF(self->message_kinds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define BUSY_GUARD(self)                                                                      \
    if ((self)->busy) {                                                                       \
        PyErr_SetString(PyExc_RuntimeError, "Spool is in use by another thread");             \
        return NULL;                                                                          \
    }

static PyObject *Spool_next_seq(Spool *self, PyObject *unused) {
    self->seq += SEQ_STEP;
    return PyLong_FromUnsignedLongLong(self->seq);
}

/* add(seq, ts, iface, data, comments=None, key_off=-1) */
static PyObject *Spool_add(Spool *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"seq", "ts", "iface", "data", "comments", "key_off", NULL};
    unsigned long long seq;
    long long ts;
    unsigned int iface;
    PyObject *data, *comments = Py_None;
    int key_off = -1;
    BUSY_GUARD(self);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KLIO|Oi:add", kwlist, &seq, &ts, &iface, &data, &comments, &key_off))
        return NULL;
    PyObject *bytes = PyBytes_CheckExact(data) ? (Py_INCREF(data), data) : PyBytes_FromObject(data);
    if (bytes == NULL)
        return NULL;
    if (PyBytes_GET_SIZE(bytes) > 0x7fffffff) {
        Py_DECREF(bytes);
        PyErr_SetString(PyExc_OverflowError, "add: data too long");
        return NULL;
    }
    Entry e = {0};
    e.ts = ts, e.seq = seq, e.iface = iface, e.ref = bytes;
    e.key_off = -1;
    if (key_off >= 0 && key_off <= PyBytes_GET_SIZE(bytes)) {
        e.key_off = key_off;
        e.key_len = (int32_t)(PyBytes_GET_SIZE(bytes) - key_off);
    }
    if (comments != Py_None) {
        if (!PyList_Check(comments)) {
            Py_DECREF(bytes);
            PyErr_SetString(PyExc_TypeError, "add: comments is a list of str or None");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(comments); i++)
            if (!PyUnicode_Check(PyList_GET_ITEM(comments, i))) {
                Py_DECREF(bytes);
                PyErr_SetString(PyExc_TypeError, "add: comments is a list of str or None");
                return NULL;
            }
        if (PyList_GET_SIZE(comments)) {
            e.comments = PyList_GetSlice(comments, 0, PyList_GET_SIZE(comments));
            if (e.comments == NULL) {
                Py_DECREF(bytes);
                return NULL;
            }
        }
    }
    if (inc_push(self, &e)) {
        entry_clear(self, &e);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The bytes of [off, off+len) of an entry's data (arena part, then ref), into dst. */
static int entry_range_eq(const Entry *e, Py_ssize_t off, Py_ssize_t len, const char *needle) {
    const char *a = e->chunk ? e->chunk->mem + e->off : NULL;
    Py_ssize_t alen = e->len;
    const char *r = e->ref ? PyBytes_AS_STRING(e->ref) : NULL;
    while (len > 0) {
        if (off < alen) {
            Py_ssize_t n = alen - off < len ? alen - off : len;
            if (memcmp(a + off, needle, n))
                return 0;
            needle += n, off += n, len -= n;
        } else {
            if (memcmp(r + (off - alen), needle, len))
                return 0;
            return 1;
        }
    }
    return 1;
}

static Entry *find_seq(Spool *self, unsigned long long seq) {
    for (Py_ssize_t i = self->ninc; i-- > 0;)
        if (self->inc[i].seq == seq)
            return &self->inc[i];
    for (Py_ssize_t i = self->npend; i-- > 0;)
        if (self->pend[i].seq == seq)
            return &self->pend[i];
    return NULL;
}

/* find(key) -> the seq of the newest (highest seq) pending entry whose key is these bytes, or -1 */
static PyObject *Spool_find(Spool *self, PyObject *key) {
    Py_buffer view;
    BUSY_GUARD(self);
    if (PyObject_GetBuffer(key, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const Entry *best = NULL;
    for (int pass = 0; pass < 2; pass++) {
        const Entry *arr = pass ? self->pend : self->inc;
        Py_ssize_t n = pass ? self->npend : self->ninc;
        for (Py_ssize_t i = 0; i < n; i++) {
            const Entry *e = &arr[i];
            if (e->key_off >= 0 && e->key_len == view.len && (best == NULL || e->seq > best->seq) &&
                entry_range_eq(e, e->key_off, e->key_len, view.buf))
                best = e;
        }
    }
    PyBuffer_Release(&view);
    if (best == NULL)
        return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(best->seq);
}

/* comment(seq, text) -> True when the entry is pending (the text is added unless it is there) */
static PyObject *Spool_comment(Spool *self, PyObject *args) {
    unsigned long long seq;
    PyObject *text;
    BUSY_GUARD(self);
    if (!PyArg_ParseTuple(args, "KU:comment", &seq, &text))
        return NULL;
    Entry *e = find_seq(self, seq);
    if (e == NULL)
        Py_RETURN_FALSE;
    if (e->comments == NULL) {
        e->comments = PyList_New(0);
        if (e->comments == NULL)
            return NULL;
    }
    int has = PySequence_Contains(e->comments, text);
    if (has < 0 || (!has && PyList_Append(e->comments, text) < 0))
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *special(unsigned long long seq, PyObject *item, PyObject *ts, PyObject *record, PyObject *cause) {
    /* steals ts, record (NULL: None); cause is borrowed (NULL: None) */
    PyObject *t = PyTuple_New(5);
    if (t == NULL) {
        Py_XDECREF(ts);
        Py_XDECREF(record);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, PyLong_FromUnsignedLongLong(seq));
    Py_INCREF(item);
    PyTuple_SET_ITEM(t, 1, item);
    PyTuple_SET_ITEM(t, 2, ts ? ts : (Py_INCREF(Py_None), Py_None));
    PyTuple_SET_ITEM(t, 3, record ? record : (Py_INCREF(Py_None), Py_None));
    PyObject *c = cause ? cause : Py_None;
    Py_INCREF(c);
    PyTuple_SET_ITEM(t, 4, c);
    if (PyTuple_GET_ITEM(t, 0) == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static int append_special(PyObject *list, PyObject *t) {
    if (t == NULL)
        return -1;
    int r = PyList_Append(list, t);
    Py_DECREF(t);
    return r;
}

/* int(t * 1e9) + offset for an exact float or int t; -1: not ours */
static int event_ts(PyObject *t, int64_t offset, int64_t *out) {
    double d;
    if (PyFloat_CheckExact(t))
        d = PyFloat_AS_DOUBLE(t);
    else if (PyLong_CheckExact(t)) {
        d = PyLong_AsDouble(t);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
    } else
        return -1;
    d *= 1e9;
    if (!isfinite(d) || d >= 9.2e18 || d <= -9.2e18)
        return -1;
    int64_t v = (int64_t)d, s;
    if (__builtin_add_overflow(v, offset, &s))
        return -1;
    *out = s;
    return 0;
}

/* One event: 0 handled (or special appended), -1 error. */
static int ingest_event(Spool *self, PyObject *ev, unsigned long long seq, PyObject *last_rx, PyObject *specials, long *n_ev) {
    if ((PyObject *)Py_TYPE(ev) != EventType)
        return append_special(specials, special(seq, ev, NULL, NULL, NULL));
    int64_t ts;
    if (event_ts(SLOT(ev, 0), self->offset_ns, &ts))
        return append_special(specials, special(seq, ev, NULL, NULL, NULL));
    Buf b;
    buf_init(&b);
    if (put(&b, PyBytes_AS_STRING(self->header), PyBytes_GET_SIZE(self->header)))
        goto fail_nomem;
    if (enc_event(&b, ev)) { /* cannot be serialised: the Python path counts it */
        PyErr_Clear();
        buf_free(&b);
        return append_special(specials, special(seq, ev, NULL, NULL, NULL));
    }
    PyObject *kind = SLOT(ev, 1), *host = SLOT(ev, 2), *fields = SLOT(ev, 6);
    if (kind == NULL || host == NULL || fields == NULL)
        goto odd_unheld;
    Py_INCREF(kind), Py_INCREF(host), Py_INCREF(fields); /* a host's __hash__ could run Python */
    int is_special = 0, is_rx = 0;
    if (PyUnicode_CheckExact(kind)) {
        is_special = PySet_Contains(self->special_kinds, kind);
        int is_msg = PySet_Contains(self->message_kinds, kind);
        if (is_special < 0 || is_msg < 0)
            goto odd;
        if (is_msg) {
            if (!PyDict_Check(fields))
                goto odd;
            PyObject *dir = PyDict_GetItemWithError(fields, S_dir);
            if (dir == NULL && PyErr_Occurred())
                goto odd;
            if (dir != NULL) {
                Py_INCREF(dir);
                is_rx = PyObject_RichCompareBool(dir, S_rx, Py_EQ);
                Py_DECREF(dir);
                if (is_rx < 0)
                    goto odd;
            }
        }
    } else
        goto odd;
    PyObject *cause = NULL;
    if (is_special) {
        cause = PyDict_GetItemWithError(last_rx, host);
        if (cause == NULL && PyErr_Occurred())
            goto odd;
        Py_XINCREF(cause);
    }
    if (is_rx && PyDict_SetItem(last_rx, host, ev) < 0) {
        Py_XDECREF(cause);
        goto odd;
    }
    Py_DECREF(kind), Py_DECREF(host), Py_DECREF(fields);
    if (is_special) {
        PyObject *rec = PyBytes_FromStringAndSize(b.p, b.len);
        PyObject *pts = rec ? PyLong_FromLongLong(ts) : NULL;
        buf_free(&b);
        int r = (rec && pts) ? append_special(specials, special(seq, ev, pts, rec, cause)) : (Py_XDECREF(rec), -1);
        Py_XDECREF(cause);
        return r;
    }
    {
        Entry e = {0};
        char *p = arena_alloc(self, (size_t)b.len, &e.chunk, &e.off);
        if (p == NULL)
            goto fail_nomem;
        memcpy(p, b.p, b.len);
        e.len = (uint32_t)b.len, e.ts = ts, e.seq = seq, e.iface = self->event_iface, e.key_off = -1;
        buf_free(&b);
        if (inc_push(self, &e)) {
            entry_clear(self, &e);
            return -1;
        }
        (*n_ev)++;
        return 0;
    }
odd: /* a lookup raised (an unhashable host, a strange dir): the Python path does it all */
    Py_DECREF(kind), Py_DECREF(host), Py_DECREF(fields);
odd_unheld:
    PyErr_Clear();
    buf_free(&b);
    return append_special(specials, special(seq, ev, NULL, NULL, NULL));
fail_nomem:
    buf_free(&b);
    return -1;
}

static PyObject *getattr_or_null(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        PyErr_Clear();
    return v;
}

static int ingest_frame(Spool *self, PyObject *f, unsigned long long seq, PyObject *local_addrs, PyObject *specials, long *n_fr) {
    /* direction, dropped and src first: the receiver's copy of a frame whose sender is
     * recorded too (half of them) is skipped after three lookups */
    PyObject *a[8] = {0};
    PyObject *names[8] = {S_direction, S_dropped, S_src, S_timestamp_ns, S_sport, S_dst, S_dport, S_payload};
    int r = 0, fast = 1, i = 0;
    for (; i < 3 && fast; i++)
        fast = (a[i] = getattr_or_null(f, names[i])) != NULL;
    PyObject *dir = a[0], *dropped = a[1], *src = a[2];
    if (fast) {
        int drop = PyObject_IsTrue(dropped);
        fast = drop == 0;
        if (drop < 0)
            PyErr_Clear();
    }
    if (fast && !PyUnicode_CheckExact(dir))
        fast = 0; /* the Python path compares it */
    if (fast && PyUnicode_CompareWithASCIIString(dir, "rx") == 0) {
        int local = PySet_Contains(local_addrs, src);
        if (local < 0) {
            PyErr_Clear();
            fast = 0;
        } else if (local) {
            goto done; /* we have the sender's copy */
        }
    }
    for (; i < 8 && fast; i++)
        fast = (a[i] = getattr_or_null(f, names[i])) != NULL;
    PyObject *tsv = a[3], *sport = a[4], *dst = a[5], *dport = a[6], *payload = a[7];
    unsigned char s4[4], d4[4];
    unsigned sp_, dp_;
    long long ts = 0;
    int overflow = 0;
    if (fast)
        fast = PyBytes_CheckExact(payload) && PyBytes_GET_SIZE(payload) <= 65535 - 28 && !parse_ipv4(src, s4) && !parse_ipv4(dst, d4) &&
               !port_of(sport, &sp_) && !port_of(dport, &dp_) && PyLong_CheckExact(tsv);
    if (fast) {
        ts = PyLong_AsLongLongAndOverflow(tsv, &overflow);
        if (overflow || (ts == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            fast = 0;
        }
    }
    if (!fast) {
        r = append_special(specials, special(seq, f, NULL, NULL, NULL));
        goto done;
    }
    Entry e = {0};
    Py_ssize_t plen = PyBytes_GET_SIZE(payload), orig = plen;
    PyObject *length = PyObject_GetAttr(f, S_length); /* the frame on the wire, when the tap kept only its start */
    if (length == NULL)
        PyErr_Clear();
    else {
        if (PyLong_CheckExact(length)) {
            long long v = PyLong_AsLongLong(length);
            if (v == -1 && PyErr_Occurred())
                PyErr_Clear();
            else if (v > plen && v <= 65535 - 28)
                orig = (Py_ssize_t)v;
        }
        Py_DECREF(length);
    }
#ifdef COPY_PAYLOAD
    char *p = arena_alloc(self, FRAME_HDR + plen, &e.chunk, &e.off);
#else
    char *p = arena_alloc(self, FRAME_HDR, &e.chunk, &e.off);
#endif
    if (p == NULL) {
        r = -1;
        goto done;
    }
    frame_header((unsigned char *)p, s4, d4, sp_, dp_, (size_t)orig);
    e.ts = ts, e.seq = seq, e.iface = self->frame_iface, e.cut = (uint32_t)(orig - plen);
#ifdef COPY_PAYLOAD
    memcpy(p + FRAME_HDR, PyBytes_AS_STRING(payload), plen);
    e.len = FRAME_HDR + plen;
#else
    e.len = FRAME_HDR;
    Py_INCREF(payload);
    e.ref = payload;
#endif
    int32_t koff, klen;
    send_key((const unsigned char *)PyBytes_AS_STRING(payload), plen, &koff, &klen);
    e.key_off = koff >= 0 ? FRAME_HDR + koff : -1;
    e.key_len = klen;
    if (inc_push(self, &e)) {
        entry_clear(self, &e);
        r = -1;
        goto done;
    }
    (*n_fr)++;
done:
    for (int j = 0; j < 8; j++)
        Py_XDECREF(a[j]);
    return r;
}

/* A blob of the compiled soft-RoCE engine's raw tap records (native/softroce/module.c,
 * tap_read_raw): each frame straight into the arena, no Python object per frame. A dropped
 * frame (it has a reason) becomes a FrameRecord made by FrameFactory and goes the special
 * way, for its comment. */
#define TAPREC_HDR 40
static PyObject *FrameFactory; /* builds a frame object from (direction, ts, src, sport, dst, dport, payload, reason, length) */

static PyObject *ip_str(const unsigned char b[4]) { return PyUnicode_FromFormat("%u.%u.%u.%u", b[0], b[1], b[2], b[3]); }

static int ingest_raw(Spool *self, PyObject *blob, const uint32_t *locals, int nlocals, PyObject *specials, long *n_fr) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(blob);
    Py_ssize_t n = PyBytes_GET_SIZE(blob);
    for (Py_ssize_t pos = 0; pos + TAPREC_HDR <= n;) {
        const unsigned char *r = p + pos;
        uint32_t size, src, dst, len, orig;
        uint16_t sport, dport;
        int64_t ts;
        memcpy(&size, r, 4);
        if (size < TAPREC_HDR || pos + (Py_ssize_t)size > n)
            break; /* a damaged blob: the rest is not ours to guess */
        unsigned dir = r[4], rlen = r[5];
        memcpy(&sport, r + 6, 2);
        memcpy(&dport, r + 8, 2);
        memcpy(&src, r + 12, 4);
        memcpy(&dst, r + 16, 4);
        memcpy(&len, r + 20, 4);
        memcpy(&orig, r + 24, 4);
        memcpy(&ts, r + 32, 8);
        pos += size;
        if (TAPREC_HDR + rlen + (size_t)len > size || dir > 1)
            continue;
        const unsigned char *reason = r + TAPREC_HDR, *frame = reason + rlen;
        self->seq += SEQ_STEP;
        if (rlen) { /* dropped: the recorder comments it */
            if (FrameFactory == NULL)
                continue;
            unsigned char s4[4], d4[4];
            memcpy(s4, &src, 4);
            memcpy(d4, &dst, 4);
            PyObject *f = PyObject_CallFunction(FrameFactory, "sLNHNHy#NO", dir ? "rx" : "tx", (long long)ts, ip_str(s4), sport, ip_str(d4),
                                                dport, (const char *)frame, (Py_ssize_t)len,
                                                PyUnicode_DecodeUTF8((const char *)reason, rlen, "replace"),
                                                orig != len ? PyLong_FromUnsignedLong(orig) : Py_None);
            if (f == NULL || append_special(specials, special(self->seq, f, NULL, NULL, NULL))) {
                Py_XDECREF(f);
                return -1;
            }
            Py_DECREF(f);
            continue;
        }
        if (dir == 1) { /* the receiver's copy of a frame whose sender is recorded too */
            int local = 0;
            for (int i = 0; i < nlocals && !local; i++)
                local = locals[i] == src;
            if (local)
                continue;
        }
        if (orig < len || orig > 65535 - 28)
            orig = len;
        Entry e = {0};
        char *q = arena_alloc(self, FRAME_HDR + len, &e.chunk, &e.off);
        if (q == NULL)
            return -1;
        unsigned char s4[4], d4[4];
        memcpy(s4, &src, 4);
        memcpy(d4, &dst, 4);
        frame_header((unsigned char *)q, s4, d4, sport, dport, orig);
        memcpy(q + FRAME_HDR, frame, len);
        e.ts = ts, e.seq = self->seq, e.iface = self->frame_iface, e.cut = orig - len, e.len = FRAME_HDR + len;
        int32_t koff, klen;
        send_key(frame, len, &koff, &klen);
        e.key_off = koff >= 0 ? FRAME_HDR + koff : -1;
        e.key_len = klen;
        if (inc_push(self, &e)) {
            entry_clear(self, &e);
            return -1;
        }
        (*n_fr)++;
    }
    return 0;
}

static PyObject *m_set_frame_factory(PyObject *mod, PyObject *fn) {
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "set_frame_factory needs a callable");
        return NULL;
    }
    Py_INCREF(fn);
    Py_XSETREF(FrameFactory, fn);
    Py_RETURN_NONE;
}

/* ingest(items, local_addrs, last_rx) -> (events, frames, specials) */
static PyObject *Spool_ingest(Spool *self, PyObject *args) {
    PyObject *items, *local_addrs, *last_rx;
    BUSY_GUARD(self);
    if (!PyArg_ParseTuple(args, "O!OO!:ingest", &PyList_Type, &items, &local_addrs, &PyDict_Type, &last_rx))
        return NULL;
    if (EventType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_eventenc is not configured");
        return NULL;
    }
    if (!PyAnySet_Check(local_addrs)) {
        PyErr_SetString(PyExc_TypeError, "ingest: local_addrs is a set");
        return NULL;
    }
    PyObject *specials = PyList_New(0);
    if (specials == NULL)
        return NULL;
    long n_ev = 0, n_fr = 0;
    uint32_t locals[16];
    int nlocals = -1; /* the local addresses as the raw records have them, parsed at the first blob */
    self->busy = 1; /* the twin's to_json or an odd item's attributes can run Python: no other thread meanwhile */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        Py_INCREF(item);
        int r;
        if (PyBytes_CheckExact(item)) {
            if (nlocals < 0) {
                nlocals = 0;
                PyObject *it = PyObject_GetIter(local_addrs), *a;
                while (it && (a = PyIter_Next(it)) != NULL) {
                    unsigned char b[4];
                    if (nlocals < 16 && !parse_ipv4(a, b))
                        memcpy(&locals[nlocals++], b, 4);
                    Py_DECREF(a);
                }
                Py_XDECREF(it);
                if (PyErr_Occurred())
                    PyErr_Clear();
            }
            r = ingest_raw(self, item, locals, nlocals, specials, &n_fr);
            Py_DECREF(item);
            if (r) {
                self->busy = 0;
                Py_DECREF(specials);
                return NULL;
            }
            continue;
        }
        self->seq += SEQ_STEP;
        r = PyObject_TypeCheck(item, (PyTypeObject *)EventType) ? ingest_event(self, item, self->seq, last_rx, specials, &n_ev)
                                                                : ingest_frame(self, item, self->seq, local_addrs, specials, &n_fr);
        Py_DECREF(item);
        if (r) {
            self->busy = 0;
            Py_DECREF(specials);
            return NULL;
        }
    }
    self->busy = 0;
    return Py_BuildValue("llN", n_ev, n_fr, specials);
}

static int entry_cmp(const void *pa, const void *pb) {
    const Entry *a = pa, *b = pb;
    if (a->ts != b->ts)
        return a->ts < b->ts ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static inline size_t pad4(size_t n) { return (n + 3) & ~(size_t)3; }

#define MAX_COMMENT 65532

/* The entries up to a limit, ready to be written: phase 1 sorts what came in and merges
 * it into the pending run (without the interpreter lock), phase 2 joins the comments of
 * the entries to write (with it). */
typedef struct {
    Py_ssize_t cut;    /* all[0, cut) are written */
    PyObject **ctext;  /* their comments as UTF-8 bytes, or NULL */
} Batch;

static int batch_begin(Spool *self, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t first, Batch *bt) {
    int has_limit = nargs > first && args[first] != Py_None;
    long long limit = 0;
    bt->cut = 0, bt->ctext = NULL;
    if (has_limit) {
        limit = PyLong_AsLongLong(args[first]);
        if (limit == -1 && PyErr_Occurred())
            return -1;
    }
    Py_ssize_t n = self->npend + self->ninc;
    Entry *all = PyMem_RawMalloc(sizeof(Entry) * (n ? n : 1));
    if (all == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->busy = 1;
    Entry *pend = self->pend, *inc = self->inc;
    Py_ssize_t np = self->npend, ni = self->ninc, cut;
    Py_BEGIN_ALLOW_THREADS;
    Py_ssize_t i = 0, j = 0, k = 0;
    while (i + 1 < ni && entry_cmp(&inc[i], &inc[i + 1]) <= 0)
        i++;
    if (i + 1 < ni) /* not in order as it came (events and frames of several threads) */
        qsort(inc, ni, sizeof(Entry), entry_cmp);
    i = 0;
    while (i < np && j < ni)
        all[k++] = entry_cmp(&pend[i], &inc[j]) <= 0 ? pend[i++] : inc[j++];
    while (i < np)
        all[k++] = pend[i++];
    while (j < ni)
        all[k++] = inc[j++];
    cut = n;
    if (has_limit) {
        Py_ssize_t lo = 0, hi = n; /* the first entry with ts > limit */
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            if (all[mid].ts <= limit)
                lo = mid + 1;
            else
                hi = mid;
        }
        cut = lo;
    }
    Py_END_ALLOW_THREADS;
    PyMem_RawFree(self->pend);
    self->pend = all, self->npend = n, self->cappend = n ? n : 1;
    self->ninc = 0;
    bt->cut = cut;
    if (cut == 0)
        return 0;
    bt->ctext = PyMem_RawCalloc(cut, sizeof(PyObject *));
    if (bt->ctext == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t x = 0; x < cut; x++) {
        Entry *e = &all[x];
        if (e->comments == NULL || !PyList_GET_SIZE(e->comments))
            continue;
        PyObject *nl = PyUnicode_FromString("\n");
        PyObject *joined = nl ? PyUnicode_Join(nl, e->comments) : NULL;
        Py_XDECREF(nl);
        PyObject *u = joined ? PyUnicode_AsEncodedString(joined, "utf-8", "replace") : NULL;
        Py_XDECREF(joined);
        if (u == NULL)
            return -1;
        if (PyBytes_GET_SIZE(u) > MAX_COMMENT) {
            PyObject *cutu = PyBytes_FromStringAndSize(PyBytes_AS_STRING(u), MAX_COMMENT);
            Py_DECREF(u);
            if ((u = cutu) == NULL)
                return -1;
        }
        bt->ctext[x] = u;
    }
    return 0;
}

/* Phase 4: release what was written (or, after an error, what was to be). */
static void batch_end(Spool *self, Batch *bt, int written) {
    if (bt->ctext != NULL) {
        for (Py_ssize_t x = 0; x < bt->cut; x++)
            Py_XDECREF(bt->ctext[x]);
        PyMem_RawFree(bt->ctext);
    }
    if (written) {
        for (Py_ssize_t x = 0; x < bt->cut; x++)
            entry_clear(self, &self->pend[x]);
        memmove(self->pend, self->pend + bt->cut, sizeof(Entry) * (self->npend - bt->cut));
        self->npend -= bt->cut;
    }
    self->busy = 0;
}

typedef struct {
    uint32_t head[7];
    uint16_t opt[2];
    uint32_t end_and_total[2];
} BlockParts;

/* The parts of entry e's block: head (28 bytes), data (arena, then ref), padding,
 * the comment option (its header, text, padding, end of options), the total. */
static uint32_t block_parts(const Entry *e, PyObject *ctext, BlockParts *bp, size_t *dlen_out, size_t *clen_out) {
    size_t rlen = e->ref ? (size_t)PyBytes_GET_SIZE(e->ref) : 0, dlen = e->len + rlen;
    size_t clen = ctext ? (size_t)PyBytes_GET_SIZE(ctext) : 0;
    uint32_t blen = (uint32_t)(32 + pad4(dlen) + (ctext ? 4 + pad4(clen) + 4 : 0));
    uint32_t head[7] = {0x00000006, blen, e->iface, (uint32_t)((uint64_t)e->ts >> 32), (uint32_t)((uint64_t)e->ts & 0xffffffffu),
                        (uint32_t)dlen, (uint32_t)(dlen + e->cut)};
    memcpy(bp->head, head, sizeof head); /* little-endian hosts only (checked at import), as the section header says */
    bp->opt[0] = 1, bp->opt[1] = (uint16_t)clen;
    bp->end_and_total[0] = 0, bp->end_and_total[1] = blen;
    *dlen_out = dlen, *clen_out = clen;
    return blen;
}

/* take(limit=None) -> (blocks: bytes, count): every entry with ts <= limit (all of them
 * without a limit), as pcapng enhanced packet blocks in (ts, seq) order. */
static PyObject *Spool_take(Spool *self, PyObject *const *args, Py_ssize_t nargs) {
    BUSY_GUARD(self);
    Batch bt;
    PyObject *out = NULL;
    if (batch_begin(self, args, nargs, 0, &bt))
        goto fail;
    Entry *all = self->pend;
    PyObject **ctext = bt.ctext;
    Py_ssize_t cut = bt.cut;
    size_t total = 0;
    for (Py_ssize_t x = 0; x < cut; x++) {
        BlockParts bp;
        size_t dlen, clen;
        total += block_parts(&all[x], ctext[x], &bp, &dlen, &clen);
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL)
        goto fail;
    char *o = PyBytes_AS_STRING(out);
    static const char zeros[4] = {0};
    Py_BEGIN_ALLOW_THREADS; /* the payloads are immutable bytes we hold */
    for (Py_ssize_t x = 0; x < cut; x++) {
        Entry *e = &all[x];
        BlockParts bp;
        size_t dlen, clen;
        block_parts(e, ctext[x], &bp, &dlen, &clen);
        memcpy(o, bp.head, 28), o += 28;
        if (e->len)
            memcpy(o, e->chunk->mem + e->off, e->len);
        if (e->ref)
            memcpy(o + e->len, PyBytes_AS_STRING(e->ref), PyBytes_GET_SIZE(e->ref));
        memcpy(o + dlen, zeros, pad4(dlen) - dlen), o += pad4(dlen);
        if (ctext[x]) {
            memcpy(o, bp.opt, 4), o += 4;
            memcpy(o, PyBytes_AS_STRING(ctext[x]), clen);
            memcpy(o + clen, zeros, pad4(clen) - clen), o += pad4(clen);
            memcpy(o, zeros, 4), o += 4;
        }
        memcpy(o, &bp.end_and_total[1], 4), o += 4;
    }
    Py_END_ALLOW_THREADS;
    batch_end(self, &bt, 1);
    return Py_BuildValue("Nn", out, cut);
fail:
    Py_XDECREF(out);
    batch_end(self, &bt, 0);
    return NULL;
}

#include <sys/uio.h>
#include <errno.h>
#define IOV_BATCH 1024 /* IOV_MAX on Linux */

/* writev all of iov[0, n), resuming after partial writes; 0 or an errno */
static int writev_all(int fd, struct iovec *iov, int n) {
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++, n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* write(fd, limit=None) -> count: what take() returns, written to the file descriptor
 * with writev and the interpreter lock released (no copy of the frames in between). */
static PyObject *Spool_write(Spool *self, PyObject *const *args, Py_ssize_t nargs) {
    BUSY_GUARD(self);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "write(fd, limit=None)");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    Batch bt;
    if (batch_begin(self, args, nargs, 1, &bt)) {
        batch_end(self, &bt, 0);
        return NULL;
    }
    Entry *all = self->pend;
    PyObject **ctext = bt.ctext;
    Py_ssize_t cut = bt.cut;
    int err = 0;
    BlockParts *parts = cut ? PyMem_RawMalloc(sizeof(BlockParts) * (cut < 256 ? cut : 256)) : NULL;
    struct iovec *iov = PyMem_RawMalloc(sizeof(struct iovec) * IOV_BATCH);
    if ((cut && parts == NULL) || iov == NULL) {
        PyMem_RawFree(parts);
        PyMem_RawFree(iov);
        batch_end(self, &bt, 0);
        return PyErr_NoMemory();
    }
    static char zeros[4] = {0};
    Py_BEGIN_ALLOW_THREADS; /* the payloads are immutable bytes we hold */
    int n = 0, np = 0;
    for (Py_ssize_t x = 0; x < cut && !err; x++) {
        Entry *e = &all[x];
        BlockParts *bp = &parts[np++];
        size_t dlen, clen;
        block_parts(e, ctext[x], bp, &dlen, &clen);
#define IOV(p, l) do { if (l) { iov[n].iov_base = (void *)(p); iov[n].iov_len = (l); n++; } } while (0)
        IOV(bp->head, 28);
        IOV(e->len ? e->chunk->mem + e->off : NULL, e->len);
        IOV(e->ref ? PyBytes_AS_STRING(e->ref) : NULL, e->ref ? (size_t)PyBytes_GET_SIZE(e->ref) : 0);
        IOV(zeros, pad4(dlen) - dlen);
        if (ctext[x]) {
            IOV(bp->opt, 4);
            IOV(PyBytes_AS_STRING(ctext[x]), clen);
            IOV(zeros, pad4(clen) - clen);
            IOV(zeros, 4);
        }
        IOV(&bp->end_and_total[1], 4);
#undef IOV
        if (n > IOV_BATCH - 10 || np == 256) { /* an entry takes at most 9 */
            err = writev_all(fd, iov, n);
            n = 0, np = 0;
        }
    }
    if (!err && n)
        err = writev_all(fd, iov, n);
    Py_END_ALLOW_THREADS;
    PyMem_RawFree(parts);
    PyMem_RawFree(iov);
    batch_end(self, &bt, 1); /* after an error the file is damaged anyway: nothing is written twice */
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(cut);
}

static PyObject *Spool_len(Spool *self, void *unused) { return PyLong_FromSsize_t(self->npend + self->ninc); }

static PyObject *Spool_get_seq(Spool *self, void *unused) { return PyLong_FromUnsignedLongLong(self->seq); }

static PyMethodDef Spool_methods[] = {
    {"next_seq", (PyCFunction)Spool_next_seq, METH_NOARGS, "A sequence number for an entry Python adds."},
    {"add", (PyCFunction)(void (*)(void))Spool_add, METH_VARARGS | METH_KEYWORDS, "add(seq, ts, iface, data, comments=None, key_off=-1)"},
    {"find", (PyCFunction)Spool_find, METH_O, "find(key) -> seq of the newest pending entry with this key, or -1"},
    {"comment", (PyCFunction)Spool_comment, METH_VARARGS, "comment(seq, text) -> whether the entry is still pending"},
    {"ingest", (PyCFunction)Spool_ingest, METH_VARARGS, "ingest(items, local_addrs, last_rx) -> (events, frames, specials)"},
    {"take", (PyCFunction)(void (*)(void))Spool_take, METH_FASTCALL, "take(limit=None) -> (bytes, count)"},
    {"write", (PyCFunction)(void (*)(void))Spool_write, METH_FASTCALL, "write(fd, limit=None) -> count (writev, no lock held)"},
    {NULL},
};

static PyGetSetDef Spool_getset[] = {
    {"pending", (getter)Spool_len, NULL, "entries not written yet", NULL},
    {"seq", (getter)Spool_get_seq, NULL, "the last sequence number given", NULL},
    {NULL},
};

static PyTypeObject SpoolType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_eventenc.Spool",
    .tp_basicsize = sizeof(Spool),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The recorder's pending timeline (twin: dissectors.spool.Spool).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Spool_init,
    .tp_dealloc = (destructor)Spool_dealloc,
    .tp_methods = Spool_methods,
    .tp_getset = Spool_getset,
};

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"set_frame_factory", m_set_frame_factory, METH_O, "set_frame_factory(Frame): what a dropped frame of a raw tap blob becomes"},
    {"configure", m_configure, METH_VARARGS, "configure(Event, enum.Enum, python_to_json)"},
    {"to_json", m_to_json, METH_O, "The canonical JSON of an event (stack.events.to_json)."},
    {"to_json_line", m_to_json_line, METH_O, "to_json(event) + newline."},
    {"record", (PyCFunction)(void (*)(void))m_record, METH_FASTCALL, "record(event, header) -> header + JSON as bytes"},
    {"drain", m_drain, METH_O, "drain(deque) -> list: everything in it, atomically."},
    {"frame_header", m_frame_header, METH_VARARGS, "frame_header(src, dst, sport, dport, payload_len) -> 42 bytes, or None"},
    {"clear_shapes", m_clear_shapes, METH_NOARGS, "Forget the cached event shapes."},
    {NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_eventenc", "Fast event encoding (see native/eventenc.c).", -1, methods};

PyMODINIT_FUNC PyInit__eventenc(void) {
#if PY_BIG_ENDIAN
    PyErr_SetString(PyExc_ImportError, "_eventenc writes little-endian pcapng blocks only");
    return NULL;
#endif
    if (PyType_Ready(&SpoolType) < 0 || PyType_Ready(&LineWriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(S_value, "_value_");
    INTERN(S_name, "_name_");
    INTERN(S_round, "__round__");
    INTERN(S_dir, "dir");
    INTERN(S_rx, "rx");
    INTERN(S_direction, "direction");
    INTERN(S_timestamp_ns, "timestamp_ns");
    INTERN(S_src, "src");
    INTERN(S_sport, "sport");
    INTERN(S_dst, "dst");
    INTERN(S_dport, "dport");
    INTERN(S_payload, "payload");
    INTERN(S_length, "length");
    INTERN(S_dropped, "dropped");
    INTERN(S_write, "write");
    INTERN(S_kind, "kind");
    for (int i = 0; i < 6; i++)
        INTERN(ID_NAMES[i], SLOT_NAMES[i]);
    if ((NINE = PyLong_FromLong(9)) == NULL)
        return NULL;
    Py_INCREF(&SpoolType);
    Py_INCREF(&LineWriterType);
    if (PyModule_AddObject(m, "Spool", (PyObject *)&SpoolType) < 0 || PyModule_AddObject(m, "LineWriter", (PyObject *)&LineWriterType) < 0 || PyModule_AddIntConstant(m, "SEQ_STEP", SEQ_STEP) < 0 ||
        PyModule_AddIntConstant(m, "MAX_COMMENT", MAX_COMMENT) < 0)
        return NULL;
    return m;
}
