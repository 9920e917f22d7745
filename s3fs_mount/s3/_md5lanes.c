/* MD5 of several independent streams at once, one per lane of the CPU's vector registers.
 *
 * A multipart object's ETag is the MD5 of its parts' MD5s, and its parts arrive side by side
 * (ranged GETs in parallel): their MD5s are independent chains, so a round of MD5 can be run on
 * eight of them at once in 256-bit registers (sixteen in 512-bit ones) for about the cost of
 * one in a scalar register.  A lone MD5 is a chain of dependent steps, so OpenSSL's scalar MD5
 * leaves the vector units idle (bench/README.md, round 40: ~1.4 s of CPU a GiB here).
 *
 * Written from RFC 1321.  The state of a stream is a bytearray of STATE_SIZE bytes owned by the
 * caller (struct md5_state); update_lanes() hashes one buffer into each of several states with
 * the GIL released.  Compiled with GCC's vector extensions; target_clones picks AVX-512 (VL),
 * AVX2 or plain SSE2 when the module is loaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__ || !defined(__x86_64__)
#error "built for x86-64 only (little-endian words, target_clones): setup.py builds it there"
#endif

#define LANES 16

struct md5_state {
    uint32_t h[4];
    uint64_t length; /* bytes hashed so far */
    uint32_t buffered;
    uint8_t buf[64];
};

#define STATE_SIZE ((Py_ssize_t)sizeof(struct md5_state))

static const uint32_t K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};
static const int R[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
    5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 5, 9,  14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
};
/* Which message word step i adds. */
#define WORD(i) ((i) < 16 ? (i) : (i) < 32 ? (5 * (i) + 1) % 16 : (i) < 48 ? (3 * (i) + 5) % 16 : (7 * (i)) % 16)

static inline uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One stream, ``blocks`` 64-byte blocks at ``p``: the 64 steps written out, so that each
 * step's word, constant and rotation are constants (as fast as OpenSSL's here). */
#define ROUND1(a, b, c, d, i) a = b + rol(a + ((b & c) | (~b & d)) + K[i] + m[WORD(i)], R[i])
#define ROUND2(a, b, c, d, i) a = b + rol(a + ((d & b) | (~d & c)) + K[i] + m[WORD(i)], R[i])
#define ROUND3(a, b, c, d, i) a = b + rol(a + (b ^ c ^ d) + K[i] + m[WORD(i)], R[i])
#define ROUND4(a, b, c, d, i) a = b + rol(a + (c ^ (b | ~d)) + K[i] + m[WORD(i)], R[i])
#define FOUR(F, i)             \
    F(a, b, c, d, i);          \
    F(d, a, b, c, i + 1);      \
    F(c, d, a, b, i + 2);      \
    F(b, c, d, a, i + 3)

static inline uint32_t rol(uint32_t x, int r) {
    return x << r | x >> (32 - r);
}

static void md5_blocks(uint32_t h[4], const uint8_t *p, size_t blocks) {
    for (; blocks; blocks--, p += 64) {
        uint32_t m[16], a = h[0], b = h[1], c = h[2], d = h[3];
        for (int i = 0; i < 16; i++)
            m[i] = load_le32(p + 4 * i);
        FOUR(ROUND1, 0);
        FOUR(ROUND1, 4);
        FOUR(ROUND1, 8);
        FOUR(ROUND1, 12);
        FOUR(ROUND2, 16);
        FOUR(ROUND2, 20);
        FOUR(ROUND2, 24);
        FOUR(ROUND2, 28);
        FOUR(ROUND3, 32);
        FOUR(ROUND3, 36);
        FOUR(ROUND3, 40);
        FOUR(ROUND3, 44);
        FOUR(ROUND4, 48);
        FOUR(ROUND4, 52);
        FOUR(ROUND4, 56);
        FOUR(ROUND4, 60);
        h[0] += a, h[1] += b, h[2] += c, h[3] += d;
    }
}

/* ``n`` streams side by side (n <= W), each ``blocks`` 64-byte blocks from its pointer, in
 * vectors of W lanes (lanes past ``n`` hash a block of zeros, for nothing). */
#define STEP(i, F)                                                     \
    do {                                                               \
        __typeof__(aa) t = aa + (F) + K[i] + m[WORD(i)];                \
        aa = dd;                                                       \
        dd = cc;                                                       \
        cc = bb;                                                       \
        bb = bb + ((t << R[i]) | (t >> (32 - R[i])));                  \
    } while (0)
#define DEFINE_LANES(W)                                                                        \
    typedef uint32_t vec##W __attribute__((vector_size(4 * W)));                               \
    __attribute__((target_clones("avx512f", "avx2", "default")))                              \
    static void md5_lanes##W(uint32_t *h[], const uint8_t *p[], int n, size_t blocks) {        \
        static const uint8_t zero[64];                                                         \
        const uint8_t *q[W];                                                                   \
        vec##W a, b, c, d;                                                                     \
        for (int l = 0; l < W; l++) {                                                          \
            q[l] = l < n ? p[l] : zero;                                                        \
            a[l] = l < n ? h[l][0] : 0;                                                        \
            b[l] = l < n ? h[l][1] : 0;                                                        \
            c[l] = l < n ? h[l][2] : 0;                                                        \
            d[l] = l < n ? h[l][3] : 0;                                                        \
        }                                                                                      \
        for (size_t k = 0; k < blocks; k++) {                                                  \
            uint32_t words[16][W]; /* word i of each lane's block, side by side */             \
            vec##W m[16];                                                                      \
            for (int l = 0; l < W; l++) {                                                      \
                uint32_t w[16];                                                                \
                memcpy(w, q[l], 64); /* little-endian words (x86-64) */                       \
                for (int i = 0; i < 16; i++)                                                   \
                    words[i][l] = w[i];                                                        \
                if (l < n)                                                                     \
                    q[l] += 64;                                                                \
            }                                                                                  \
            memcpy(m, words, sizeof m);                                                        \
            vec##W aa = a, bb = b, cc = c, dd = d;                                             \
            for (int i = 0; i < 16; i++)                                                       \
                STEP(i, (bb & cc) | (~bb & dd));                                               \
            for (int i = 16; i < 32; i++)                                                      \
                STEP(i, (dd & bb) | (~dd & cc));                                               \
            for (int i = 32; i < 48; i++)                                                      \
                STEP(i, bb ^ cc ^ dd);                                                         \
            for (int i = 48; i < 64; i++)                                                      \
                STEP(i, cc ^ (bb | ~dd));                                                      \
            a += aa, b += bb, c += cc, d += dd;                                                \
        }                                                                                      \
        for (int l = 0; l < n; l++) {                                                          \
            h[l][0] = a[l], h[l][1] = b[l], h[l][2] = c[l], h[l][3] = d[l];                    \
            p[l] = q[l];                                                                       \
        }                                                                                      \
    }

DEFINE_LANES(4)
DEFINE_LANES(8)
DEFINE_LANES(16)

/* The narrowest vectors that hold ``n`` lanes. */
static void md5_lanes(uint32_t *h[], const uint8_t *p[], int n, size_t blocks) {
    if (n <= 4)
        md5_lanes4(h, p, n, blocks);
    else if (n <= 8)
        md5_lanes8(h, p, n, blocks);
    else
        md5_lanes16(h, p, n, blocks);
}

static void state_init(struct md5_state *s) {
    s->h[0] = 0x67452301, s->h[1] = 0xefcdab89, s->h[2] = 0x98badcfe, s->h[3] = 0x10325476;
    s->length = 0;
    s->buffered = 0;
}

/* Hash ``len`` bytes at ``p`` into each state; the lanes run together while two or more have
 * whole blocks left, the last alone. */
static void update_all(struct md5_state *s[], const uint8_t *p[], size_t len[], int n) {
    uint32_t *h[LANES];
    const uint8_t *q[LANES];
    size_t blocks[LANES];
    int idx[LANES];
    int active = 0;
    for (int l = 0; l < n; l++) {
        struct md5_state *st = s[l];
        st->length += len[l];
        if (st->buffered) { /* fill the partial block first */
            size_t take = 64 - st->buffered < len[l] ? 64 - st->buffered : len[l];
            memcpy(st->buf + st->buffered, p[l], take);
            st->buffered += (uint32_t)take;
            p[l] += take;
            len[l] -= take;
            if (st->buffered < 64)
                continue;
            md5_blocks(st->h, st->buf, 1);
            st->buffered = 0;
        }
        blocks[l] = len[l] / 64;
        if (blocks[l]) {
            idx[active++] = l;
        }
    }
    while (active > 1) {
        size_t least = (size_t)-1;
        for (int i = 0; i < active; i++) {
            int l = idx[i];
            h[i] = s[l]->h;
            q[i] = p[l];
            if (blocks[l] < least)
                least = blocks[l];
        }
        md5_lanes(h, q, active, least);
        int kept = 0;
        for (int i = 0; i < active; i++) {
            int l = idx[i];
            p[l] = q[i];
            len[l] -= least * 64;
            blocks[l] -= least;
            if (blocks[l])
                idx[kept++] = l;
        }
        active = kept;
    }
    if (active == 1) {
        int l = idx[0];
        md5_blocks(s[l]->h, p[l], blocks[l]);
        p[l] += blocks[l] * 64;
        len[l] -= blocks[l] * 64;
    }
    for (int l = 0; l < n; l++) {
        if (len[l]) { /* the tail, under a block */
            memcpy(s[l]->buf + s[l]->buffered, p[l], len[l]);
            s[l]->buffered += (uint32_t)len[l];
        }
    }
}

static struct md5_state *as_state(Py_buffer *view) {
    if (view->len != STATE_SIZE || view->readonly) {
        PyErr_SetString(PyExc_ValueError, "not an MD5 state (a bytearray from new())");
        return NULL;
    }
    return (struct md5_state *)view->buf;
}

static PyObject *py_new(PyObject *self, PyObject *args) {
    PyObject *out = PyByteArray_FromStringAndSize(NULL, STATE_SIZE);
    if (out == NULL)
        return NULL;
    memset(PyByteArray_AS_STRING(out), 0, STATE_SIZE);
    state_init((struct md5_state *)PyByteArray_AS_STRING(out));
    return out;
}

/* update_lanes(states, datas): hash datas[i] into states[i], all of them at once. */
static PyObject *py_update_lanes(PyObject *self, PyObject *args) {
    PyObject *states, *datas;
    if (!PyArg_ParseTuple(args, "OO", &states, &datas))
        return NULL;
    PyObject *sf = PySequence_Fast(states, "states must be a sequence");
    if (sf == NULL)
        return NULL;
    PyObject *df = PySequence_Fast(datas, "datas must be a sequence");
    if (df == NULL) {
        Py_DECREF(sf);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sf);
    if (n != PySequence_Fast_GET_SIZE(df) || n > LANES) {
        PyErr_Format(PyExc_ValueError, "as many states as datas, at most %d", LANES);
        Py_DECREF(sf);
        Py_DECREF(df);
        return NULL;
    }
    Py_buffer sv[LANES], dv[LANES];
    struct md5_state *s[LANES];
    const uint8_t *p[LANES];
    size_t len[LANES];
    Py_ssize_t got = 0;
    int ok = 1;
    for (; got < n; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(sf, got), &sv[got], PyBUF_WRITABLE) < 0) {
            ok = 0;
            break;
        }
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(df, got), &dv[got], PyBUF_C_CONTIGUOUS) < 0) {
            PyBuffer_Release(&sv[got]);
            ok = 0;
            break;
        }
        s[got] = as_state(&sv[got]);
        if (s[got] == NULL) {
            PyBuffer_Release(&sv[got]);
            PyBuffer_Release(&dv[got]);
            ok = 0;
            break;
        }
        p[got] = dv[got].buf;
        len[got] = (size_t)dv[got].len;
    }
    for (Py_ssize_t i = 0; ok && i < n; i++)
        for (Py_ssize_t j = 0; j < i; j++)
            if (s[i] == s[j]) {
                PyErr_SetString(PyExc_ValueError, "one state twice");
                ok = 0;
            }
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        update_all(s, p, len, (int)n);
        Py_END_ALLOW_THREADS
    }
    for (Py_ssize_t i = 0; i < got; i++) {
        PyBuffer_Release(&sv[i]);
        PyBuffer_Release(&dv[i]);
    }
    Py_DECREF(sf);
    Py_DECREF(df);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* digest(state) -> the 16 bytes of the MD5 of what was hashed into it (the state unchanged). */
static PyObject *py_digest(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    struct md5_state *src = as_state(&view);
    if (src == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    struct md5_state s = *src;
    PyBuffer_Release(&view);
    uint64_t bits = s.length * 8;
    uint8_t pad[128] = {0x80};
    size_t padlen = (s.buffered < 56 ? 56 : 120) - s.buffered;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (uint8_t)(bits >> (8 * i));
    const uint8_t *p = pad;
    size_t total = padlen + 8, rest = total;
    /* Through the buffer: the tail, the padding and the length. */
    size_t take = 64 - s.buffered;
    memcpy(s.buf + s.buffered, p, take);
    md5_blocks(s.h, s.buf, 1);
    p += take;
    rest -= take;
    if (rest)
        md5_blocks(s.h, p, 1);
    uint8_t out[16];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (uint8_t)(s.h[i] >> (8 * j));
    (void)total;
    return PyBytes_FromStringAndSize((const char *)out, 16);
}

static PyMethodDef methods[] = {
    {"new", py_new, METH_NOARGS, "A fresh MD5 state (a bytearray)."},
    {"update_lanes", py_update_lanes, METH_VARARGS,
     "update_lanes(states, datas): hash datas[i] into states[i], side by side, without the GIL."},
    {"digest", py_digest, METH_O, "digest(state) -> the MD5 (16 bytes) of what the state hashed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_md5lanes", "MD5 of several streams at once (vector lanes).", -1, methods,
};

PyMODINIT_FUNC PyInit__md5lanes(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "LANES", LANES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
