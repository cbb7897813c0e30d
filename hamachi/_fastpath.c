/* hamachi._fastpath: the per-packet loop of the data plane, in C.

   Python states the protocol; this module only carries the hot loop, where a profile showed
   that Python's own overhead (not the AEAD, not the syscalls) dominated. Every function here
   has a pure-Python twin that is the reference (hamachi/crypto/session.py, replay.py and
   hamachi/proto/offload.py); the tests run both against the same vectors, and
   HAMACHI_NO_C=1 forces the twins (see hamachi/_accel.py). The wire format is the twins'.

     Aead(kind, key)                 kind 1 = ChaCha20-Poly1305, 2 = AES-256-GCM (OpenSSL EVP)
       .seal_many(prefix, remote_index, counter, packets) -> [datagram]
       .open_many(datagrams, replay) -> ([plaintext], replays, forgeries)
     Replay()                        the RFC 6479 window of replay.py (64 blocks of 64 bits)
       .last, .check(c), .advance_fast(c), .update(c)
     split_tcp(packet, mss)          -> [segment], or None: "not for me, ask the twin" (errors)
     coalesce(packets, udp)          -> [TUN write with virtio-net header]

   A data message:  | type, 0, 0, 0 | receiver index u32le | counter u64le | ciphertext | tag 16 |
   Nonce: 4 zero bytes, then the counter as u64le (RFC 8439 section 2.8, as in WireGuard).
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define HDR_LEN 16
#define TAG_LEN 16
#define BLOCKS 64
#define WINDOW ((BLOCKS - 1) * 64)
#define VNET_HDR_LEN 10
#define F_NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define MAX_UDP_SEGMENTS 64
#define MAX_COALESCE (65535 - 60)
#define TCP_FIN 1
#define TCP_SYN 2
#define TCP_RST 4
#define TCP_PSH 8
#define TCP_ACK 16
#define TCP_URG 32
#define TCP_ECE 64
#define TCP_CWR 128
#define MERGE_BLOCKERS (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR | TCP_ECE)

static inline void put_u32le(uint8_t *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
static inline void put_u64le(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline uint64_t get_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint32_t get_u32be(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static inline void put_u16be(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put_u32be(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static inline void put_u16le(uint8_t *p, unsigned v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

/* The folded ones'-complement sum of offload.csum_fold: 0 only when data and initial are all zero. */
static unsigned csum_fold(const uint8_t *d, Py_ssize_t n, uint64_t initial) {
    uint64_t s = initial;
    Py_ssize_t i = 0;
    for (; i + 1 < n; i += 2) s += (uint32_t)d[i] << 8 | d[i + 1];
    if (n & 1) s += (uint32_t)d[n - 1] << 8;
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (unsigned)s;
}

/* ---------------------------------------------------------------- Replay */

typedef struct {
    PyObject_HEAD
    long long last;
    uint64_t ring[BLOCKS];
} ReplayObject;

static int replay_check(ReplayObject *r, long long c) {
    if (c > r->last) return 1;
    if (c + WINDOW <= r->last) return 0;
    return !((r->ring[(c >> 6) & (BLOCKS - 1)] >> (c & 63)) & 1);
}

static int replay_advance_fast(ReplayObject *r, long long c) {
    long long last = r->last;
    if (c <= last || (c >> 6) != (last >> 6) || last < 0) return 0;
    r->ring[(c >> 6) & (BLOCKS - 1)] |= (uint64_t)1 << (c & 63);
    r->last = c;
    return 1;
}

static int replay_update(ReplayObject *r, long long c) {
    if (c > r->last) {
        long long index = c >> 6;
        long long cur = r->last >= 0 ? r->last >> 6 : -1;
        long long diff = index - cur;
        if (diff > BLOCKS) diff = BLOCKS;
        for (long long i = 1; i <= diff; i++) r->ring[(cur + i) & (BLOCKS - 1)] = 0;
        r->last = c;
    } else if (c + WINDOW <= r->last) {
        return 0;
    }
    int idx = (int)((c >> 6) & (BLOCKS - 1));
    uint64_t bit = (uint64_t)1 << (c & 63);
    if (r->ring[idx] & bit) return 0;
    r->ring[idx] |= bit;
    return 1;
}

static PyObject *Replay_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "Replay() takes no arguments");
        return NULL;
    }
    ReplayObject *r = (ReplayObject *)type->tp_alloc(type, 0);
    if (r) r->last = -1;
    return (PyObject *)r;
}

static int counter_arg(PyObject *o, long long *c) {
    *c = PyLong_AsLongLong(o);
    if (*c == -1 && PyErr_Occurred()) return 0;
    if (*c < 0) { PyErr_SetString(PyExc_ValueError, "counter must be >= 0"); return 0; }
    return 1;
}

static PyObject *Replay_check(ReplayObject *r, PyObject *o) {
    long long c; if (!counter_arg(o, &c)) return NULL;
    return PyBool_FromLong(replay_check(r, c));
}
static PyObject *Replay_advance_fast(ReplayObject *r, PyObject *o) {
    long long c; if (!counter_arg(o, &c)) return NULL;
    return PyBool_FromLong(replay_advance_fast(r, c));
}
static PyObject *Replay_update(ReplayObject *r, PyObject *o) {
    long long c; if (!counter_arg(o, &c)) return NULL;
    return PyBool_FromLong(replay_update(r, c));
}
static PyObject *Replay_get_last(ReplayObject *r, void *closure) { return PyLong_FromLongLong(r->last); }

static PyMethodDef Replay_methods[] = {
    {"check", (PyCFunction)Replay_check, METH_O, "True if the counter may be new."},
    {"advance_fast", (PyCFunction)Replay_advance_fast, METH_O, "Record the newest counter in the newest block."},
    {"update", (PyCFunction)Replay_update, METH_O, "Record the counter; False if a replay or too old."},
    {NULL}};
static PyGetSetDef Replay_getset[] = {{"last", (getter)Replay_get_last, NULL, "newest counter seen", NULL}, {NULL}};

static PyTypeObject ReplayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hamachi._fastpath.Replay",
    .tp_basicsize = sizeof(ReplayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sliding anti-replay window (RFC 6479 style), the twin of crypto.replay.ReplayWindow.",
    .tp_new = Replay_new,
    .tp_methods = Replay_methods,
    .tp_getset = Replay_getset,
};

/* ------------------------------------------------------------------ Aead */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
} AeadObject;

static void Aead_dealloc(AeadObject *a) {
    if (a->enc) EVP_CIPHER_CTX_free(a->enc);
    if (a->dec) EVP_CIPHER_CTX_free(a->dec);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyObject *Aead_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    int kind;
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "iy*", &kind, &key)) return NULL;
    const EVP_CIPHER *cipher = kind == 1 ? EVP_chacha20_poly1305() : kind == 2 ? EVP_aes_256_gcm() : NULL;
    if (!cipher || key.len != 32) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "Aead(kind, key): kind 1 or 2 and a 32-byte key");
        return NULL;
    }
    AeadObject *a = (AeadObject *)type->tp_alloc(type, 0);
    if (!a) { PyBuffer_Release(&key); return NULL; }
    a->enc = EVP_CIPHER_CTX_new();
    a->dec = EVP_CIPHER_CTX_new();
    int ok = a->enc && a->dec && EVP_EncryptInit_ex(a->enc, cipher, NULL, key.buf, NULL) == 1 &&
             EVP_DecryptInit_ex(a->dec, cipher, NULL, key.buf, NULL) == 1;
    PyBuffer_Release(&key);
    if (!ok) {
        Py_DECREF(a);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the cipher");
        return NULL;
    }
    return (PyObject *)a;
}

static PyObject *Aead_seal_many(AeadObject *a, PyObject *args) {
    Py_buffer prefix;
    unsigned long remote;
    unsigned long long counter;
    PyObject *packets;
    if (!PyArg_ParseTuple(args, "y*kKO!", &prefix, &remote, &counter, &PyList_Type, &packets)) return NULL;
    if (prefix.len != 4) {
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_ValueError, "prefix must be 4 bytes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(packets);
    PyObject *out = PyList_New(n);
    if (!out) { PyBuffer_Release(&prefix); return NULL; }
    uint8_t nonce[12] = {0};
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer pt;
        if (PyObject_GetBuffer(PyList_GET_ITEM(packets, i), &pt, PyBUF_SIMPLE) < 0) goto fail;
        if (pt.len > INT32_MAX - HDR_LEN - TAG_LEN) {
            PyBuffer_Release(&pt);
            PyErr_SetString(PyExc_ValueError, "packet too large");
            goto fail;
        }
        PyObject *d = PyBytes_FromStringAndSize(NULL, HDR_LEN + pt.len + TAG_LEN);
        if (!d) { PyBuffer_Release(&pt); goto fail; }
        uint8_t *p = (uint8_t *)PyBytes_AS_STRING(d);
        uint64_t c = counter + (uint64_t)i;
        memcpy(p, prefix.buf, 4);
        put_u32le(p + 4, (uint32_t)remote);
        put_u64le(p + 8, c);
        put_u64le(nonce + 4, c);
        int l1 = 0, l2 = 0;
        int ok = EVP_EncryptInit_ex(a->enc, NULL, NULL, NULL, nonce) == 1 &&
                 EVP_EncryptUpdate(a->enc, p + HDR_LEN, &l1, pt.buf, (int)pt.len) == 1 &&
                 EVP_EncryptFinal_ex(a->enc, p + HDR_LEN + l1, &l2) == 1 &&
                 EVP_CIPHER_CTX_ctrl(a->enc, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, p + HDR_LEN + pt.len) == 1;
        PyBuffer_Release(&pt);
        if (!ok) {
            Py_DECREF(d);
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL encryption failed");
            goto fail;
        }
        PyList_SET_ITEM(out, i, d);
    }
    PyBuffer_Release(&prefix);
    return out;
fail:
    PyBuffer_Release(&prefix);
    Py_DECREF(out);
    return NULL;
}

static PyObject *Aead_open_many(AeadObject *a, PyObject *args) {
    PyObject *datagrams;
    ReplayObject *r;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &datagrams, &ReplayType, &r)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(datagrams);
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    long replays = 0, forged = 0;
    uint8_t nonce[12] = {0};
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer d;
        if (PyObject_GetBuffer(PyList_GET_ITEM(datagrams, i), &d, PyBUF_SIMPLE) < 0) goto fail;
        if (d.len < HDR_LEN + TAG_LEN || d.len > INT32_MAX) {  /* the caller filters these; count as forged */
            PyBuffer_Release(&d);
            forged++;
            continue;
        }
        const uint8_t *p = d.buf;
        uint64_t cu = get_u64le(p + 8);
        if (cu > (uint64_t)LLONG_MAX - WINDOW) {  /* beyond any counter a sender may use: a forgery */
            PyBuffer_Release(&d);
            forged++;
            continue;
        }
        long long c = (long long)cu;
        if (c <= r->last && !replay_check(r, c)) {
            PyBuffer_Release(&d);
            replays++;
            continue;
        }
        Py_ssize_t ctlen = d.len - HDR_LEN - TAG_LEN;
        PyObject *pt = PyBytes_FromStringAndSize(NULL, ctlen);
        if (!pt) { PyBuffer_Release(&d); goto fail; }
        put_u64le(nonce + 4, cu);
        int l1 = 0, l2 = 0;
        uint8_t *q = (uint8_t *)PyBytes_AS_STRING(pt);
        int ok = EVP_DecryptInit_ex(a->dec, NULL, NULL, NULL, nonce) == 1 &&
                 EVP_DecryptUpdate(a->dec, q, &l1, p + HDR_LEN, (int)ctlen) == 1 &&
                 EVP_CIPHER_CTX_ctrl(a->dec, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, (void *)(p + HDR_LEN + ctlen)) == 1 &&
                 EVP_DecryptFinal_ex(a->dec, q + l1, &l2) == 1;
        PyBuffer_Release(&d);
        if (!ok) {
            Py_DECREF(pt);
            forged++;
            continue;
        }
        if (!replay_advance_fast(r, c) && !replay_update(r, c)) {
            Py_DECREF(pt);
            replays++;
            continue;
        }
        int rc = PyList_Append(out, pt);
        Py_DECREF(pt);
        if (rc < 0) goto fail;
    }
    return Py_BuildValue("Nll", out, replays, forged);
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef Aead_methods[] = {
    {"seal_many", (PyCFunction)Aead_seal_many, METH_VARARGS,
     "seal_many(prefix, remote_index, counter, packets) -> datagrams, counters counter, counter+1, ..."},
    {"open_many", (PyCFunction)Aead_open_many, METH_VARARGS,
     "open_many(datagrams, replay) -> (plaintexts, replays, forgeries)"},
    {NULL}};

static PyTypeObject AeadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hamachi._fastpath.Aead",
    .tp_basicsize = sizeof(AeadObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One AEAD key with an OpenSSL EVP context per direction of use.",
    .tp_new = Aead_new,
    .tp_dealloc = (destructor)Aead_dealloc,
    .tp_methods = Aead_methods,
};

/* ------------------------------------------------------------- split_tcp */

static PyObject *split_tcp(PyObject *self, PyObject *args) {
    Py_buffer b;
    Py_ssize_t mss;
    if (!PyArg_ParseTuple(args, "y*n", &b, &mss)) return NULL;
    const uint8_t *pkt = b.buf;
    Py_ssize_t total = b.len;
    int v = total ? pkt[0] >> 4 : 0, ihl;
    if (mss <= 0) goto twin;
    if (v == 4) {
        ihl = (pkt[0] & 0x0F) * 4;
        if (ihl < 20 || total < ihl + 20 || pkt[9] != 6) goto twin;
    } else if (v == 6) {
        ihl = 40;
        if (total < 60 || pkt[6] != 6) goto twin;
    } else {
        goto twin;
    }
    int thl = (pkt[ihl + 12] >> 4) * 4;
    if (thl < 20 || total < ihl + thl) goto twin;
    Py_ssize_t hlen = ihl + thl;
    uint8_t hdr[120];
    memcpy(hdr, pkt, hlen);
    uint32_t seq = get_u32be(hdr + ihl + 4);
    int flags = hdr[ihl + 13];
    int mid_flags = flags & ~(TCP_FIN | TCP_PSH);
    Py_ssize_t n = (total - hlen + mss - 1) / mss;
    if (n < 1) n = 1;
    unsigned ip_id = 0, base = 0;
    if (v == 4) {
        ip_id = (unsigned)hdr[4] << 8 | hdr[5];
        memset(hdr + 2, 0, 4);
        hdr[10] = hdr[11] = 0;
        base = csum_fold(hdr, ihl, 0);
    }
    PyObject *out = PyList_New(n);
    if (!out) { PyBuffer_Release(&b); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t start = hlen + i * mss;
        Py_ssize_t clen = total - start;
        if (clen > mss) clen = mss;
        if (clen < 0) clen = 0;
        Py_ssize_t length = hlen + clen;
        if (v == 4) {
            unsigned ident = (ip_id + (unsigned)i) & 0xFFFF;
            uint64_t c = (uint64_t)base + (uint64_t)length + ident;
            c = (c & 0xFFFF) + (c >> 16);
            c = (c & 0xFFFF) + (c >> 16);
            put_u16be(hdr + 2, (unsigned)length);
            put_u16be(hdr + 4, ident);
            put_u16be(hdr + 10, (unsigned)(0xFFFF - c));
        } else {
            put_u16be(hdr + 4, (unsigned)(length - 40));
        }
        put_u32be(hdr + ihl + 4, seq + (uint32_t)(i * mss));
        int f = i == n - 1 ? flags : mid_flags;
        hdr[ihl + 13] = (uint8_t)(i == 0 ? f : f & ~TCP_CWR);
        PyObject *s = PyBytes_FromStringAndSize(NULL, length);
        if (!s) { Py_DECREF(out); PyBuffer_Release(&b); return NULL; }
        uint8_t *q = (uint8_t *)PyBytes_AS_STRING(s);
        memcpy(q, hdr, hlen);
        if (clen) memcpy(q + hlen, pkt + start, clen);
        PyList_SET_ITEM(out, i, s);
    }
    PyBuffer_Release(&b);
    return out;
twin:
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

/* -------------------------------------------------------------- coalesce */

/* offload._l4: (ihl, proto, checksum offset) of an unfragmented TCP or UDP packet; 0 if none. */
static int l4_of(const uint8_t *p, Py_ssize_t n, int *ihl, int *proto, int *off) {
    if (n < 28) return 0;
    int b0 = p[0];
    if (b0 >> 4 == 4) {
        *proto = p[9];
        *ihl = (b0 & 0x0F) * 4;
        if (*ihl < 20 || (p[6] & 0x3F) || p[7]) return 0;
    } else if (b0 >> 4 == 6 && n >= 48) {
        *proto = p[6];
        *ihl = 40;
    } else {
        return 0;
    }
    if (*proto == 6 && n >= *ihl + 20) { *off = 16; return 1; }
    if (*proto == 17 && n >= *ihl + 8) { *off = 6; return 1; }
    return 0;
}

static void vnet(uint8_t *h, int flags, int gso, unsigned hdr_len, unsigned gso_size, unsigned cstart, unsigned coff) {
    h[0] = (uint8_t)flags;
    h[1] = (uint8_t)gso;
    put_u16le(h + 2, hdr_len);
    put_u16le(h + 4, gso_size);
    put_u16le(h + 6, cstart);
    put_u16le(h + 8, coff);
}

/* offload.tcp_pseudo */
static unsigned pseudo(const uint8_t *p, Py_ssize_t n, int ihl, int proto) {
    if (p[0] >> 4 == 4) return csum_fold(p + 12, 8, (uint64_t)proto + (uint64_t)(n - ihl));
    return csum_fold(p + 8, 32, (uint64_t)proto + (uint64_t)(n - ihl));
}

/* offload._single */
static PyObject *single_write(const uint8_t *p, Py_ssize_t n) {
    int ihl, proto, off;
    PyObject *o = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + n);
    if (!o) return NULL;
    uint8_t *q = (uint8_t *)PyBytes_AS_STRING(o);
    memcpy(q + VNET_HDR_LEN, p, n);
    if (!l4_of(p, n, &ihl, &proto, &off)) {
        memset(q, 0, VNET_HDR_LEN);
        return o;
    }
    vnet(q, F_NEEDS_CSUM, GSO_NONE, 0, 0, ihl, off);
    put_u16be(q + VNET_HDR_LEN + ihl + off, pseudo(p, n, ihl, proto));
    return o;
}

typedef struct {
    const uint8_t *key_ip;
    int key_ip_len, v, ihl, thl, flags;
    uint32_t seq;
    Py_ssize_t plen;
} Flow;

/* offload._flow */
static int flow_of(const uint8_t *p, Py_ssize_t n, Flow *f) {
    if (n < 40) return 0;
    int v = p[0] >> 4;
    if (v == 4) {
        if (p[0] != 0x45 || p[9] != 6 || (p[6] & 0x3F) || p[7]) return 0;
        f->ihl = 20;
        f->key_ip = p + 12;
        f->key_ip_len = 8;
    } else if (v == 6) {
        if (n < 60 || p[6] != 6) return 0;
        f->ihl = 40;
        f->key_ip = p + 8;
        f->key_ip_len = 32;
    } else {
        return 0;
    }
    f->v = v;
    f->thl = (p[f->ihl + 12] >> 4) * 4;
    f->flags = p[f->ihl + 13];
    if (f->thl < 20 || (f->flags & MERGE_BLOCKERS) || !(f->flags & TCP_ACK) || n <= f->ihl + f->thl) return 0;
    f->seq = get_u32be(p + f->ihl + 4);
    f->plen = n - f->ihl - f->thl;
    return 1;
}

/* Same flow: addresses, ports, ack number, window and options equal (offload._flow's key). */
static int same_flow(const uint8_t *a, const Flow *fa, const uint8_t *b, const Flow *fb) {
    if (fa->v != fb->v || fa->thl != fb->thl) return 0;
    int ihl = fa->ihl;
    if (memcmp(fa->key_ip, fb->key_ip, fa->key_ip_len)) return 0;
    if (memcmp(a + ihl, b + ihl, 4) || memcmp(a + ihl + 8, b + ihl + 8, 4) || memcmp(a + ihl + 14, b + ihl + 14, 2))
        return 0;
    return memcmp(a + ihl + 20, b + ihl + 20, fa->thl - 20) == 0;
}

/* offload._udp_key: the key's bytes, or NULL */
static const uint8_t *udp_key(const uint8_t *p, Py_ssize_t n, int *klen) {
    if (n < 28) return NULL;
    if (p[0] == 0x45 && p[9] == 17 && !((p[6] & 0x3F) || p[7])) { *klen = 12; return p + 12; }
    if (p[0] >> 4 == 6 && p[6] == 17 && n >= 48) { *klen = 36; return p + 8; }
    return NULL;
}

typedef struct { const uint8_t *p; Py_ssize_t n; } Pkt;

static PyObject *merge_tcp(Pkt *run, Py_ssize_t m, const Flow *f, Py_ssize_t mss, int last_flags) {
    int ihl = f->ihl, hlen = f->ihl + f->thl;
    Py_ssize_t total = hlen;
    for (Py_ssize_t k = 0; k < m; k++) total += run[k].n - hlen;
    PyObject *o = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + total);
    if (!o) return NULL;
    uint8_t *q = (uint8_t *)PyBytes_AS_STRING(o);
    uint8_t *h = q + VNET_HDR_LEN;
    memcpy(h, run[0].p, run[0].n);
    Py_ssize_t at = run[0].n;
    for (Py_ssize_t k = 1; k < m; k++) {
        memcpy(h + at, run[k].p + hlen, run[k].n - hlen);
        at += run[k].n - hlen;
    }
    unsigned ps;
    int gso;
    if (f->v == 4) {
        put_u16be(h + 2, (unsigned)total);
        h[10] = h[11] = 0;
        put_u16be(h + 10, (0xFFFF - csum_fold(h, 20, 0)) & 0xFFFF);
        ps = csum_fold(h + 12, 8, 6 + (uint64_t)(total - ihl));
        gso = GSO_TCPV4;
    } else {
        put_u16be(h + 4, (unsigned)(total - 40));
        ps = csum_fold(h + 8, 32, 6 + (uint64_t)(total - ihl));
        gso = GSO_TCPV6;
    }
    h[ihl + 13] |= (uint8_t)(last_flags & TCP_PSH);
    put_u16be(h + ihl + 16, ps);
    vnet(q, F_NEEDS_CSUM, gso, hlen, (unsigned)mss, ihl, 16);
    return o;
}

static PyObject *merge_udp(Pkt *run, Py_ssize_t m) {
    int ihl = run[0].p[0] >> 4 == 4 ? 20 : 40, hlen = ihl + 8;
    Py_ssize_t total = hlen;
    for (Py_ssize_t k = 0; k < m; k++) total += run[k].n - hlen;
    PyObject *o = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + total);
    if (!o) return NULL;
    uint8_t *q = (uint8_t *)PyBytes_AS_STRING(o);
    uint8_t *h = q + VNET_HDR_LEN;
    memcpy(h, run[0].p, run[0].n);
    Py_ssize_t at = run[0].n;
    for (Py_ssize_t k = 1; k < m; k++) {
        memcpy(h + at, run[k].p + hlen, run[k].n - hlen);
        at += run[k].n - hlen;
    }
    if (ihl == 20) {
        put_u16be(h + 2, (unsigned)total);
        h[10] = h[11] = 0;
        put_u16be(h + 10, (0xFFFF - csum_fold(h, 20, 0)) & 0xFFFF);
    } else {
        put_u16be(h + 4, (unsigned)(total - 40));
    }
    put_u16be(h + ihl + 4, (unsigned)(total - ihl));
    if (ihl == 20)
        put_u16be(h + ihl + 6, csum_fold(h + 12, 8, 17 + (uint64_t)(total - ihl)));
    else
        put_u16be(h + ihl + 6, csum_fold(h + 8, 32, 17 + (uint64_t)(total - ihl)));
    vnet(q, F_NEEDS_CSUM, GSO_UDP_L4, hlen, (unsigned)(run[0].n - hlen), ihl, 6);
    return o;
}

static int append_new(PyObject *list, PyObject *o) {
    if (!o) return -1;
    int rc = PyList_Append(list, o);
    Py_DECREF(o);
    return rc;
}

static PyObject *coalesce(PyObject *self, PyObject *args) {
    PyObject *packets;
    int udp = 0;
    if (!PyArg_ParseTuple(args, "O!|p", &PyList_Type, &packets, &udp)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(packets);
    Pkt *pk = PyMem_Malloc(sizeof(Pkt) * (n ? n : 1));
    if (!pk) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(packets, i);
        if (!PyBytes_Check(o)) {
            PyMem_Free(pk);
            PyErr_SetString(PyExc_TypeError, "coalesce() takes a list of bytes");
            return NULL;
        }
        pk[i].p = (const uint8_t *)PyBytes_AS_STRING(o);
        pk[i].n = PyBytes_GET_SIZE(o);
    }
    PyObject *out = PyList_New(0);
    if (!out) { PyMem_Free(pk); return NULL; }
    Py_ssize_t i = 0;
    while (i < n) {
        Flow f;
        if (!flow_of(pk[i].p, pk[i].n, &f)) {
            if (udp && i + 1 < n) {
                int klen;
                const uint8_t *key = udp_key(pk[i].p, pk[i].n, &klen);
                Py_ssize_t j = i + 1;
                if (key) {
                    Py_ssize_t size = pk[i].n, total = size;
                    while (j < n && j - i < MAX_UDP_SEGMENTS) {
                        int kl2;
                        const uint8_t *k2;
                        if (pk[j].n > size || total + pk[j].n > MAX_COALESCE) break;
                        k2 = udp_key(pk[j].p, pk[j].n, &kl2);
                        if (!k2 || kl2 != klen || memcmp(k2, key, klen)) break;
                        total += pk[j].n;
                        j++;
                        if (pk[j - 1].n < size) break;
                    }
                }
                if (j - i > 1) {
                    if (append_new(out, merge_udp(pk + i, j - i)) < 0) goto fail;
                    i = j;
                    continue;
                }
            }
            if (append_new(out, single_write(pk[i].p, pk[i].n)) < 0) goto fail;
            i++;
            continue;
        }
        Py_ssize_t total = pk[i].n, plen = f.plen;
        uint32_t nxt = f.seq + (uint32_t)plen;
        int last_flags = f.flags;
        Py_ssize_t j = i + 1;
        while (j < n && !(last_flags & TCP_PSH)) {
            Flow g;
            if (!flow_of(pk[j].p, pk[j].n, &g) || !same_flow(pk[i].p, &f, pk[j].p, &g) || g.seq != nxt ||
                g.plen > plen || total + g.plen > MAX_COALESCE)
                break;
            total += g.plen;
            nxt += (uint32_t)g.plen;
            last_flags = g.flags;
            j++;
            if (g.plen < plen) break;
        }
        if (j - i == 1) {
            if (append_new(out, single_write(pk[i].p, pk[i].n)) < 0) goto fail;
        } else {
            if (append_new(out, merge_tcp(pk + i, j - i, &f, plen, last_flags)) < 0) goto fail;
        }
        i = j;
    }
    PyMem_Free(pk);
    return out;
fail:
    PyMem_Free(pk);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"split_tcp", split_tcp, METH_VARARGS, "split_tcp(packet, mss) -> segments, or None (ask the twin)"},
    {"coalesce", coalesce, METH_VARARGS, "coalesce(packets, udp=False) -> TUN writes with virtio-net headers"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hamachi._fastpath",
                                    "The data plane's per-packet loop in C (see the file's header).", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&ReplayType) < 0 || PyType_Ready(&AeadType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ReplayType);
    Py_INCREF(&AeadType);
    if (PyModule_AddObject(m, "Replay", (PyObject *)&ReplayType) < 0 ||
        PyModule_AddObject(m, "Aead", (PyObject *)&AeadType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
