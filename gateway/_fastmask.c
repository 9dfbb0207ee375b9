/*
 * gateway._fastmask: the masking plan applied in one pass over the response
 * bytes, without building Python objects.
 *
 * Theory of operation (the Python side is gateway/rules/native.py).
 *
 * A Program is a plan's automaton flattened into C tables: per state the
 * transitions by member name (a small hash table), by array index and for
 * every other name or index, the outcome of the rule accepting there (an
 * index into the action table) and whether anything below can still match.
 * A records Program is the same for a policy's `records.path`.
 *
 * mask() parses the body once, recursively, as strict RFC 8259 JSON and
 * writes the masked document as compact JSON, byte for byte what the Python
 * reference pipeline writes (jsoncodec.decode, Plan.apply, jsoncodec.encode):
 * numbers as their source text, strings with orjson's escaping, key order as
 * sent, dropped members and elements left out, allow-list skeletons that end
 * empty removed. It counts the records and collects their ids on the
 * document as sent.
 *
 * It DECLINES (returns None) whenever the body is not something it can
 * answer for exactly: anything invalid (the Python decoder then names the
 * reason), a byte order mark, a top-level scalar, nesting beyond max_depth,
 * an escaped member name, a duplicate member name (last-wins semantics are
 * the reference's), a lone surrogate, a number with an exponent that
 * overflows a double, or a transform result it cannot write faithfully. A
 * decline costs the time spent; the caller runs the reference, so the answer
 * never depends on which path ran. Declining is the only failure mode: no
 * partial output ever leaves this module.
 *
 * mask_elements() is the element loop of a streamed records array
 * (gateway/streaming.py): each complete element masked as mask() masks it
 * alone, and the separators between them read, in one call per feed.
 *
 * Transforms are native for drop, redact, keep/reveal, hash (HMAC-SHA256
 * with precomputed pads), the character masks (keep_ends, the "significant
 * characters" variants of cn_id/bank_card/cn_phone, email), cn_name, address,
 * and round with an integer step on integers and plain decimals. Every other
 * transform (other rounds, anything new) is a Python callable, called with
 * the value as the reference decoder would have built it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__GNUC__)
#define FM_INLINE inline __attribute__((always_inline))
#define FM_NOINLINE __attribute__((noinline))
#else
#define FM_INLINE inline
#define FM_NOINLINE
#endif

/* SSE2 is baseline on x86_64; the scalar code stays for everything else.
   __builtin_ctz comes with it, so GCC and Clang only. */
#if defined(__SSE2__) && defined(__GNUC__)
#define FM_SSE2 1
#include <emmintrin.h>
#endif

/* ------------------------------------------------------------------ */
/* actions                                                              */

enum {
    OP_REVEAL = 0, /* keep / clear: walk on inside */
    OP_DROP,
    OP_REDACT,
    OP_MASK_ENDS,  /* keep_first/keep_last over all characters */
    OP_MASK_SIG,   /* same over significant characters (not ' ' or '-') */
    OP_MASK_CN_ID, /* significant; keep_last 3 for 15 significant chars else 4 */
    OP_MASK_PHONE, /* (+86|0086)[ -]? prefix kept, then significant */
    OP_MASK_EMAIL, /* keep_ends(local part, first, 0) + "@domain" */
    OP_HASH,
    OP_CALL,       /* a Python callable */
    OP_ROUND_INT,  /* round {step: integer}: ints and plain non-negative decimals */
    OP_CN_NAME,
    OP_ADDRESS
};

typedef struct {
    int op;
    int first, last;      /* -1: the preset's default */
    char mchar[4];
    int mchar_len;
    int mchar_plain;      /* mchar needs no JSON escaping */
    long long step;       /* OP_ROUND_INT */
    uint32_t inner[8], outer[8]; /* HMAC-SHA256 states after the key pads */
    int hash_len;
    PyObject *call;
} Action;

/* ------------------------------------------------------------------ */
/* automaton                                                            */

typedef struct {
    const char *key;
    Py_ssize_t len;
    uint32_t hash;
    int target;
} KeyEnt;

typedef struct {
    int outcome; /* action index, -1 none (records programs: 0 = a record) */
    int live;
    int other;   /* -1 none */
    uint32_t kmask; /* table size - 1; table NULL when no names */
    KeyEnt *ktab;
    int nidx;
    int64_t *idx;
    int *idx_target;
} State;

typedef struct {
    PyObject_HEAD
    int nstates;
    State *states;
    int start;
    int nactions;
    Action *actions;
    int unlisted; /* counter slot of unlisted values */
    int allow;
    char *keybuf;
    PyObject *refs; /* keeps callables alive */
} Program;

static inline uint64_t load8(const char *s) {
    uint64_t w;
    memcpy(&w, s, 8);
    return w;
}

static inline uint32_t load4(const char *s) {
    uint32_t w;
    memcpy(&w, s, 4);
    return w;
}

/* Member names are hashed from at most two overlapping words (first and last
   eight bytes) and the length, not byte by byte: names are short, and a
   collision only costs a comparison with an entry of the state's table. */
static inline uint32_t key_hash(const char *k, Py_ssize_t n) {
    uint64_t h;
    if (n >= 8) h = load8(k) ^ (load8(k + n - 8) * 0xC2B2AE3D27D4EB4FULL);
    else if (n >= 4) h = load4(k) | ((uint64_t)load4(k + n - 4) << 32);
    else if (n > 0) h = (unsigned char)k[0] | ((unsigned)(unsigned char)k[n / 2] << 8) |
                        ((unsigned)(unsigned char)k[n - 1] << 16);
    else h = 0;
    h = (h ^ (uint64_t)n) * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(h >> 32);
}

/* a[0:n) == b[0:n), inline (a libc memcmp call costs more than a short name) */
static inline int key_eq(const char *a, const char *b, Py_ssize_t n) {
    if (n >= 8) {
        Py_ssize_t i = 0;
        for (; i + 8 < n; i += 8)
            if (load8(a + i) != load8(b + i)) return 0;
        return load8(a + n - 8) == load8(b + n - 8);
    }
    if (n >= 4) return load4(a) == load4(b) && load4(a + n - 4) == load4(b + n - 4);
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static inline int lookup_key_h(const State *st, const char *k, Py_ssize_t n, uint32_t h) {
    if (st->ktab != NULL) {
        uint32_t i = h & st->kmask;
        for (;;) {
            const KeyEnt *e = &st->ktab[i];
            if (e->key == NULL) break;
            if (e->hash == h && e->len == n && key_eq(e->key, k, n)) return e->target;
            i = (i + 1) & st->kmask;
        }
    }
    return st->other;
}

static inline int lookup_key(const State *st, const char *k, Py_ssize_t n) {
    return lookup_key_h(st, k, n, st->ktab != NULL ? key_hash(k, n) : 0);
}

static int lookup_idx(const State *st, int64_t j) {
    for (int i = 0; i < st->nidx; i++)
        if (st->idx[i] == j) return st->idx_target[i];
    return st->other;
}

/* ------------------------------------------------------------------ */
/* SHA-256 (FIPS 180-4)                                                 */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};
static const uint32_t H256[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

/* The portable compression, unrolled with the working variables renamed per
   round instead of shifted, and the message schedule in a 16-word ring with
   constant indices: about half the instructions of the plain loop. It runs
   where the CPU has no SHA extensions (and under valgrind). */
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))
/* nested rotations: fewer register copies on two-operand machines */
#define BS0(x) ROR(ROR(ROR(x, 9) ^ (x), 11) ^ (x), 2)
#define BS1(x) ROR(ROR(ROR(x, 14) ^ (x), 5) ^ (x), 6)
#define SS0(x) (ROR(ROR(x, 11) ^ (x), 7) ^ ((x) >> 3))
#define SS1(x) (ROR(ROR(x, 2) ^ (x), 17) ^ ((x) >> 10))
#define RND(a, b, c, d, e, f, g, h, k, wi)                        \
    do {                                                          \
        uint32_t t1 = h + BS1(e) + CH(e, f, g) + (k) + (wi);      \
        d += t1;                                                  \
        h = t1 + BS0(a) + MAJ(a, b, c);                           \
    } while (0)
#define WUP(i) (w[i] += SS1(w[((i) + 14) & 15]) + w[((i) + 9) & 15] + SS0(w[((i) + 1) & 15]))
#define ROUNDS16(K, W)                                \
    RND(a, b, c, d, e, f, g, h, K[0], W(0));          \
    RND(h, a, b, c, d, e, f, g, K[1], W(1));          \
    RND(g, h, a, b, c, d, e, f, K[2], W(2));          \
    RND(f, g, h, a, b, c, d, e, K[3], W(3));          \
    RND(e, f, g, h, a, b, c, d, K[4], W(4));          \
    RND(d, e, f, g, h, a, b, c, K[5], W(5));          \
    RND(c, d, e, f, g, h, a, b, K[6], W(6));          \
    RND(b, c, d, e, f, g, h, a, K[7], W(7));          \
    RND(a, b, c, d, e, f, g, h, K[8], W(8));          \
    RND(h, a, b, c, d, e, f, g, K[9], W(9));          \
    RND(g, h, a, b, c, d, e, f, K[10], W(10));        \
    RND(f, g, h, a, b, c, d, e, K[11], W(11));        \
    RND(e, f, g, h, a, b, c, d, K[12], W(12));        \
    RND(d, e, f, g, h, a, b, c, K[13], W(13));        \
    RND(c, d, e, f, g, h, a, b, K[14], W(14));        \
    RND(b, c, d, e, f, g, h, a, K[15], W(15))
#define WLOAD(i) (w[i])

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FM_LE_GNUC 1
#endif

static inline uint32_t load_be32(const unsigned char *p) {
#ifdef FM_LE_GNUC
    uint32_t w;
    memcpy(&w, p, 4);
    return __builtin_bswap32(w);
#else
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
#endif
}

static inline void store_be32(unsigned char *p, uint32_t v) {
#ifdef FM_LE_GNUC
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
#else
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
#endif
}

static void sha256_block(uint32_t st[8], const unsigned char *p) {
    uint32_t w[16];
    for (int i = 0; i < 16; i++) w[i] = load_be32(p + 4 * i);
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6],
             h = st[7];
    ROUNDS16(K256, WLOAD);
    ROUNDS16((K256 + 16), WUP);
    ROUNDS16((K256 + 32), WUP);
    ROUNDS16((K256 + 48), WUP);
    st[0] += a; st[1] += b; st[2] += c; st[3] += d;
    st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

/* SHA-256 with the x86 SHA extensions, where the CPU has them (checked at
   import); the portable function above otherwise. Same digests: the tests
   compare both with hashlib. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI_CODE 1

__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_block_ni(uint32_t st[8],
                                                                        const unsigned char *p) {
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&st[0]);
    __m128i s1 = _mm_loadu_si128((const __m128i *)&st[4]);
    tmp = _mm_shuffle_epi32(tmp, 0xB1);        /* CDAB */
    s1 = _mm_shuffle_epi32(s1, 0x1B);          /* EFGH */
    __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);  /* ABEF */
    s1 = _mm_blend_epi16(s1, tmp, 0xF0);       /* CDGH */
    const __m128i abef = s0, cdgh = s1;
    __m128i w[16];
    for (int g = 0; g < 4; g++)
        w[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), mask);
    for (int g = 4; g < 16; g++)
        w[g] = _mm_sha256msg2_epu32(
            _mm_add_epi32(_mm_sha256msg1_epu32(w[g - 4], w[g - 3]),
                          _mm_alignr_epi8(w[g - 1], w[g - 2], 4)),
            w[g - 1]);
    for (int g = 0; g < 16; g++) {
        __m128i m = _mm_add_epi32(w[g], _mm_loadu_si128((const __m128i *)&K256[4 * g]));
        s1 = _mm_sha256rnds2_epu32(s1, s0, m);
        m = _mm_shuffle_epi32(m, 0x0E);
        s0 = _mm_sha256rnds2_epu32(s0, s1, m);
    }
    s0 = _mm_add_epi32(s0, abef);
    s1 = _mm_add_epi32(s1, cdgh);
    tmp = _mm_shuffle_epi32(s0, 0x1B);        /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);         /* DCHG */
    s0 = _mm_blend_epi16(tmp, s1, 0xF0);      /* DCBA */
    s1 = _mm_alignr_epi8(s1, tmp, 8);         /* HGFE */
    _mm_storeu_si128((__m128i *)&st[0], s0);
    _mm_storeu_si128((__m128i *)&st[4], s1);
}

static int cpu_has_sha_ni(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & (1u << 19)) || !(c & (1u << 9))) return 0; /* SSE4.1, SSSE3 */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 29)) != 0; /* SHA */
}
#endif

static void (*sha256_compress)(uint32_t st[8], const unsigned char *p) = sha256_block;

/* HMAC-SHA256 of msg, from the states after the key pads (each has absorbed
   one block): the digest as eight state words (big-endian bytes in order). The
   outer hash is one block, the inner digest and its fixed padding (96 bytes in
   all: 768 bits). */
static void hmac_sha256(const uint32_t inner[8], const uint32_t outer[8], const unsigned char *msg,
                        size_t n, uint32_t out[8]) {
    uint32_t st[8];
    memcpy(st, inner, sizeof st);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) sha256_compress(st, msg + i);
    unsigned char tail[128];
    size_t r = n - i, total = r < 56 ? 64 : 128;
    memset(tail, 0, 64);
    if (total == 128) memset(tail + 64, 0, 64);
    memcpy(tail, msg + i, r);
    tail[r] = 0x80;
    uint64_t bits = (64 + (uint64_t)n) * 8;
    store_be32(tail + total - 8, (uint32_t)(bits >> 32));
    store_be32(tail + total - 4, (uint32_t)bits);
    sha256_compress(st, tail);
    if (total == 128) sha256_compress(st, tail + 64);
    unsigned char blk[64];
    for (int k = 0; k < 8; k++) store_be32(blk + 4 * k, st[k]);
    memset(blk + 32, 0, 32);
    blk[32] = 0x80;
    blk[62] = 0x03; /* 768 = 0x300 */
    memcpy(out, outer, sizeof st);
    sha256_compress(out, blk);
}

/* The eight lowercase hex digits of w, most significant first. */
static inline void hex8(char *d, uint32_t w) {
#ifdef FM_LE_GNUC
    /* a nibble per byte, the first in the top byte; then '0'+n, or 'a'+n-10 where
       n >= 10 (n + 6 carries into bit 4: no carry leaves a byte) */
    uint64_t v = w;
    v = ((v & 0xFFFF0000ULL) << 16) | (v & 0xFFFFULL);
    v = ((v & 0x0000FF000000FF00ULL) << 8) | (v & 0x000000FF000000FFULL);
    v = ((v & 0x00F000F000F000F0ULL) << 4) | (v & 0x000F000F000F000FULL);
    uint64_t letters = ((v + 0x0606060606060606ULL) >> 4) & 0x0101010101010101ULL;
    v = __builtin_bswap64(v + 0x3030303030303030ULL + letters * 39);
    memcpy(d, &v, 8);
#else
    static const char hex[] = "0123456789abcdef";
    for (int k = 0; k < 8; k++) d[k] = hex[(w >> (28 - 4 * k)) & 15];
#endif
}

/* "h:" and the first `len` (<= 64) hex digits of the HMAC of msg, into h[2 + 64].
   Not inlined: the masks around its call site stay small. */
static FM_NOINLINE void hmac_hex(char *h, const uint32_t inner[8], const uint32_t outer[8],
                     const unsigned char *msg, size_t n, int len) {
    uint32_t d[8];
    hmac_sha256(inner, outer, msg, n, d);
    h[0] = 'h';
    h[1] = ':';
    for (int k = 0; 8 * k < len; k++) hex8(h + 2 + 8 * k, d[k]);
}

/* ------------------------------------------------------------------ */
/* output buffer                                                        */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    PyObject *obj; /* when set, p is this bytes object's storage (the result, no copy) */
} Buf;

static int buf_grow(Buf *b, Py_ssize_t need) {
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < need) cap += cap / 2 + 64;
    if (b->obj != NULL) {
        if (_PyBytes_Resize(&b->obj, cap) < 0) { /* frees the object */
            b->p = NULL;
            return -1;
        }
        b->p = PyBytes_AS_STRING(b->obj);
    } else {
        char *p = PyMem_Realloc(b->p, (size_t)cap);
        if (p == NULL) return -1;
        b->p = p;
    }
    b->cap = cap;
    return 0;
}

/* Copy 1..16 bytes with two overlapping loads and stores, within both
   ranges: most pieces written are names and short values, where a memcpy
   call and its size dispatch cost more than the copy. */
static inline void copy_small(char *d, const char *s, Py_ssize_t n) {
    if (n >= 8) {
        uint64_t x = load8(s), y = load8(s + n - 8);
        memcpy(d, &x, 8);
        memcpy(d + n - 8, &y, 8);
    } else if (n >= 4) {
        uint32_t x = load4(s), y = load4(s + n - 4);
        memcpy(d, &x, 4);
        memcpy(d + n - 4, &y, 4);
    } else {
        char x = s[0], y = s[n / 2], z = s[n - 1];
        d[0] = x;
        d[n / 2] = y;
        d[n - 1] = z;
    }
}

static inline int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (n <= 0) return 0; /* s may be NULL then (an empty decoded string) */
    if (b->cap - b->len < n && buf_grow(b, n) < 0) return -1;
    if (n <= 16) copy_small(b->p + b->len, s, n);
    else memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static inline int buf_byte(Buf *b, char c) {
    if (b->cap - b->len < 1 && buf_grow(b, 1) < 0) return -1;
    b->p[b->len++] = c;
    return 0;
}

/* Decimal text of v, as "%lld" writes it (snprintf's format parsing was a
   twentieth of a masked response at the confidential level). */
static int put_int(Buf *b, long long v) {
    char t[24];
    int k = sizeof t;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        t[--k] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) t[--k] = '-';
    return buf_put(b, t + k, (Py_ssize_t)sizeof t - k);
}

/* ------------------------------------------------------------------ */
/* the parse                                                            */

#define DECLINE (-1)
#define OK 0
#define DROPPED 1

typedef struct {
    const unsigned char *s;
    Py_ssize_t n, i;
    int depth, max_depth;
    Program *prog;
    Program *rec;      /* may be NULL */
    const char *id_key;
    Py_ssize_t id_len;
    Buf out;
    Buf tmp;           /* decoded strings, transform results */
    Py_ssize_t *counts;
    Py_ssize_t nrecords;
    PyObject *ids;     /* list of str */
    PyObject *number_type;
    int error;         /* a Python exception is set (memory) */
} Ctx;

static const char MARKER[] = "\"[REDACTED]\"";

static inline void skip_ws(Ctx *c) {
    const unsigned char *s = c->s;
    Py_ssize_t i = c->i, n = c->n;
    if (i < n && s[i] > ' ') return; /* compact JSON: nearly always */
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++;
    c->i = i;
}

static int hexval(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int read_hex4(const unsigned char *p) {
    int v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p[k]);
        if (h < 0) return -1;
        v = (v << 4) | h;
    }
    return v;
}

/* Length of a valid UTF-8 sequence at p (n bytes left), or 0. */
static inline int utf8_seq(const unsigned char *p, Py_ssize_t n) {
    unsigned char b = p[0];
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) {
        return (n >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (b >= 0xE0 && b <= 0xEF) {
        if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (b == 0xE0 && p[1] < 0xA0) return 0;   /* overlong */
        if (b == 0xED && p[1] >= 0xA0) return 0;  /* surrogate */
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if (b == 0xF0 && p[1] < 0x90) return 0;   /* overlong */
        if (b == 0xF4 && p[1] >= 0x90) return 0;  /* above U+10FFFF */
        return 4;
    }
    return 0;
}

/* Scan a string token starting at the opening quote. On success c->i is past
   the closing quote and *esc says whether it holds escapes. */
static int scan_string(Ctx *c, int *esc) {
    const unsigned char *s = c->s;
    Py_ssize_t i = c->i + 1, n = c->n;
    int e = 0;
    for (;;) {
#ifdef FM_SSE2
        /* Sixteen bytes at a time, stopping exactly at the first byte that is
           not plain ASCII: '"', '\\', or below 0x20 or at/above 0x80 (one
           signed compare: those are the bytes below 0x20 as signed chars).
           Most strings are short names and values that end inside the first
           block, so finding the position (not just "somewhere") matters. */
        {
            const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                          space = _mm_set1_epi8(0x20);
            while (i + 16 <= n) {
                __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
                __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                        _mm_cmpeq_epi8(v, bslash)),
                                           _mm_cmplt_epi8(v, space));
                unsigned m = (unsigned)_mm_movemask_epi8(hit);
                if (m) {
                    i += __builtin_ctz(m);
                    goto special;
                }
                i += 16;
            }
        }
#endif
        /* eight plain ASCII bytes at a time: none >= 0x80, < 0x20, '"' or '\\' */
        while (i + 8 <= n) {
            uint64_t w, q, b;
            memcpy(&w, s + i, 8);
            q = w ^ 0x2222222222222222ULL;
            b = w ^ 0x5C5C5C5C5C5C5C5CULL;
            uint64_t hit = (w | ((w - 0x2020202020202020ULL) & ~w) |
                            ((q - 0x0101010101010101ULL) & ~q) |
                            ((b - 0x0101010101010101ULL) & ~b)) &
                           0x8080808080808080ULL;
            if (hit) break;
            i += 8;
        }
        while (i < n && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' && s[i] != '\\') i++;
        if (i >= n) return DECLINE;
#ifdef FM_SSE2
    special:;
#endif
        unsigned char ch = s[i];
        if (ch == '"') break;
        if (ch < 0x20) return DECLINE;
        if (ch == '\\') {
            e = 1;
            if (i + 1 >= n) return DECLINE;
            unsigned char x = s[i + 1];
            if (x == 'u') {
                if (i + 6 > n) return DECLINE;
                int u = read_hex4(s + i + 2);
                if (u < 0) return DECLINE;
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (i + 12 > n || s[i + 6] != '\\' || s[i + 7] != 'u') return DECLINE;
                    int lo = read_hex4(s + i + 8);
                    if (lo < 0xDC00 || lo > 0xDFFF) return DECLINE;
                    i += 12;
                } else if (u >= 0xDC00 && u <= 0xDFFF) {
                    return DECLINE; /* lone low surrogate */
                } else {
                    i += 6;
                }
            } else if (x == '"' || x == '\\' || x == '/' || x == 'b' || x == 'f' || x == 'n' ||
                       x == 'r' || x == 't') {
                i += 2;
            } else {
                return DECLINE;
            }
            continue;
        }
        /* a run of non-ASCII characters (Chinese text): validate it in one go */
        do {
#ifdef FM_SSE2
            /* Up to five three-byte characters in one block: lead bytes E1..EF
               but not ED (so no overlong or surrogate case arises) at
               positions 0, 3, 6, 9, 12, each followed by two continuation
               bytes. ok has a bit per valid character start; p is the first
               start that is not one (15: all five are). */
            if (i + 16 <= n) {
                __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
                unsigned lead =
                    (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                        _mm_and_si128(v, _mm_set1_epi8((char)0xF0)), _mm_set1_epi8((char)0xE0))) &
                    ~(unsigned)_mm_movemask_epi8(
                        _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8((char)0xE0)),
                                     _mm_cmpeq_epi8(v, _mm_set1_epi8((char)0xED))));
                unsigned cont = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
                    _mm_and_si128(v, _mm_set1_epi8((char)0xC0)), _mm_set1_epi8((char)0x80)));
                unsigned ok = lead & (cont >> 1) & (cont >> 2) & 0x1249u;
                unsigned p = (unsigned)__builtin_ctz(~ok & 0x9249u);
                if (p) {
                    i += p;
                    continue;
                }
            }
#endif
            unsigned char b = s[i];
            /* three-byte sequences without the E0/ED special cases (all of CJK) */
            if (b >= 0xE1 && b != 0xED && b <= 0xEF && i + 2 < n && (s[i + 1] & 0xC0) == 0x80 &&
                (s[i + 2] & 0xC0) == 0x80) {
                i += 3;
                continue;
            }
            int k = utf8_seq(s + i, n - i);
            if (k == 0) return DECLINE;
            i += k;
        } while (i < n && s[i] >= 0x80);
    }
    *esc = e;
    c->i = i + 1;
    return OK;
}

/* scan_string, with the common case inline: the whole string within the
   first sixteen bytes, plain ASCII (most names and short values). */
static FM_INLINE int scan_string_fast(Ctx *c, int *esc) {
#ifdef FM_SSE2
    const unsigned char *s = c->s;
    Py_ssize_t i = c->i + 1;
    if (i + 16 <= c->n) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i hit = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
            _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
        unsigned m = (unsigned)_mm_movemask_epi8(hit);
        if (m) {
            i += __builtin_ctz(m);
            if (s[i] == '"') {
                *esc = 0;
                c->i = i + 1;
                return OK;
            }
        }
    }
#endif
    return scan_string(c, esc);
}

static int put_utf8(Buf *b, uint32_t cp) {
    char t[4];
    int k;
    if (cp < 0x80) { t[0] = (char)cp; k = 1; }
    else if (cp < 0x800) { t[0] = (char)(0xC0 | (cp >> 6)); t[1] = (char)(0x80 | (cp & 0x3F)); k = 2; }
    else if (cp < 0x10000) {
        t[0] = (char)(0xE0 | (cp >> 12)); t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[2] = (char)(0x80 | (cp & 0x3F)); k = 3;
    } else {
        t[0] = (char)(0xF0 | (cp >> 18)); t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); t[3] = (char)(0x80 | (cp & 0x3F)); k = 4;
    }
    return buf_put(b, t, k);
}

/* Decode the (already scanned, valid) string token body s[a:b) into UTF-8. */
static int unescape(Buf *dst, const unsigned char *s, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t i = a;
    while (i < b) {
        Py_ssize_t j = i;
        while (j < b && s[j] != '\\') j++;
        if (j > i && buf_put(dst, (const char *)s + i, j - i) < 0) return -1;
        if (j >= b) break;
        unsigned char x = s[j + 1];
        uint32_t cp;
        switch (x) {
        case 'b': cp = 8; break;
        case 'f': cp = 12; break;
        case 'n': cp = 10; break;
        case 'r': cp = 13; break;
        case 't': cp = 9; break;
        case 'u': {
            cp = (uint32_t)read_hex4(s + j + 2);
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo = (uint32_t)read_hex4(s + j + 8);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                j += 6;
            }
            j += 4;
            break;
        }
        default: cp = x;
        }
        if (put_utf8(dst, cp) < 0) return -1;
        i = j + 2;
    }
    return 0;
}

/* Write UTF-8 text as a JSON string, escaped as orjson escapes. */
static int put_json_string(Buf *b, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_byte(b, '"') < 0) return -1;
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t j = i;
        while (j < n && (unsigned char)s[j] >= 0x20 && s[j] != '"' && s[j] != '\\') j++;
        if (j > i && buf_put(b, s + i, j - i) < 0) return -1;
        if (j >= n) break;
        unsigned char ch = (unsigned char)s[j];
        char e[6] = {'\\', 0, 0, 0, 0, 0};
        int k = 2;
        switch (ch) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default:
            e[1] = 'u'; e[2] = '0'; e[3] = '0'; e[4] = hex[ch >> 4]; e[5] = hex[ch & 15]; k = 6;
        }
        if (buf_put(b, e, k) < 0) return -1;
        i = j + 1;
    }
    return buf_byte(b, '"');
}

/* End of the run of ASCII digits from i. Eight bytes at a time on
   little-endian GCC/Clang: x ^ '0' leaves digits as 0..9; a byte is not a
   digit when its high nibble is set or its low nibble + 6 carries into bit 4
   (exact per byte: no carry crosses bytes), and the lowest flagged byte is
   the first non-digit. Account numbers and amounts run to 20 digits. */
static inline Py_ssize_t digits_end(const unsigned char *s, Py_ssize_t i, Py_ssize_t n) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (i + 8 <= n) {
        uint64_t t = load8((const char *)s + i) ^ 0x3030303030303030ULL;
        uint64_t bad = (t & 0xF0F0F0F0F0F0F0F0ULL) |
                       (((t & 0x0F0F0F0F0F0F0F0FULL) + 0x0606060606060606ULL) &
                        0x1010101010101010ULL);
        if (bad) return i + (__builtin_ctzll(bad) >> 3);
        i += 8;
    }
#endif
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    return i;
}

/* Scan a number token; *exact_int: an integer token that the reference
   decodes as a Python int (no fraction/exponent, not -0, within int64). */
static int scan_number(Ctx *c, int *is_int) {
    const unsigned char *s = c->s;
    Py_ssize_t i = c->i, n = c->n, start = c->i;
    int integral = 1, has_exp = 0;
    if (i < n && s[i] == '-') i++;
    if (i >= n) return DECLINE;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        i = digits_end(s, i, n);
    } else {
        return DECLINE;
    }
    if (i < n && s[i] == '.') {
        integral = 0;
        i++;
        if (i >= n || s[i] < '0' || s[i] > '9') return DECLINE;
        i = digits_end(s, i, n);
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        integral = 0;
        has_exp = 1;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || s[i] < '0' || s[i] > '9') return DECLINE;
        i = digits_end(s, i, n);
    }
    Py_ssize_t len = i - start;
    if (has_exp || len > 300) {
        /* The reference refuses numbers that overflow a double. */
        char tmp[400];
        if (len >= (Py_ssize_t)sizeof tmp) return DECLINE;
        memcpy(tmp, s + start, (size_t)len);
        tmp[len] = 0;
        double d = PyOS_string_to_double(tmp, NULL, NULL);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return DECLINE;
        }
        if (isinf(d)) return DECLINE;
    }
    int exact = 0;
    if (integral) {
        if (len == 2 && s[start] == '-' && s[start + 1] == '0') {
            exact = 0;
        } else if (len < 19) {
            exact = 1;
        } else if (len <= 20) {
            /* compare with the int64 bounds textually */
            int neg = s[start] == '-';
            Py_ssize_t digits = len - neg;
            const char *lim = neg ? "9223372036854775808" : "9223372036854775807";
            if (digits < 19) exact = 1;
            else if (digits == 19) exact = memcmp(s + start + neg, lim, 19) <= 0;
        }
    }
    *is_int = exact;
    c->i = i;
    return OK;
}

/* ---- masks over UTF-8 text ---------------------------------------- */

static inline int is_cont(unsigned char b) { return (b & 0xC0) == 0x80; }

/* Masks count characters, not bytes. The counts below go eight bytes at a
   time: a continuation byte is 10xxxxxx, found in every byte of a word at
   once with no carries between bytes; the flagged bytes (0x80 each) are
   summed by one multiplication (at most 8, no overflow into the top byte). */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static inline Py_ssize_t count_flags(uint64_t m) { return (Py_ssize_t)(((m >> 7) * ONES) >> 56); }

/* 0x80 in each byte of w equal to c, exactly (no borrow between bytes) */
static inline uint64_t eq_bytes(uint64_t w, unsigned char c) {
    uint64_t t = w ^ (ONES * c);
    return ~(((t & ~HIGHS) + ~HIGHS) | t) & HIGHS;
}

/* Code points of s[0:n), and how many of them are ' ' or '-' (seps may be NULL). */
static Py_ssize_t text_stats(const char *s, Py_ssize_t n, Py_ssize_t *seps) {
    Py_ssize_t cont = 0, sep = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = load8(s + i);
        cont += count_flags(w & ~(w << 1) & HIGHS);
        if (seps != NULL) sep += count_flags(eq_bytes(w, ' ') | eq_bytes(w, '-'));
    }
    for (; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        cont += is_cont(ch);
        sep += ch == ' ' || ch == '-';
    }
    if (seps != NULL) *seps = sep;
    return n - cont;
}

static Py_ssize_t count_cp(const char *s, Py_ssize_t n) { return text_stats(s, n, NULL); }

/* byte offset of code point number `cp` (cp <= count); cps: the count */
static Py_ssize_t cp_offset(const char *s, Py_ssize_t n, Py_ssize_t cps, Py_ssize_t cp) {
    if (cps == n) return cp >= 0 && cp <= n ? cp : n; /* ASCII: bytes are characters */
    Py_ssize_t k = 0, i = 0;
    for (; i < n; i++) {
        if (!is_cont((unsigned char)s[i])) {
            if (k == cp) return i;
            k++;
        }
    }
    return n;
}

/* Room for `need` more bytes, so the writes that follow need no checks. */
static inline int buf_reserve(Buf *b, Py_ssize_t need) {
    return (b->cap - b->len < need && buf_grow(b, need) < 0) ? -1 : 0;
}

static int put_chars(Buf *b, const Action *a, Py_ssize_t k) {
    if (k <= 0) return 0;
    if (buf_reserve(b, k * a->mchar_len) < 0) return -1;
    char *p = b->p + b->len;
    if (a->mchar_len == 1) {
        memset(p, a->mchar[0], (size_t)k);
    } else {
        for (Py_ssize_t i = 0; i < k; i++, p += a->mchar_len)
            memcpy(p, a->mchar, (size_t)a->mchar_len);
    }
    b->len += k * a->mchar_len;
    return 0;
}

static int keep_ends_n(Buf *b, const Action *a, const char *s, Py_ssize_t n, Py_ssize_t cps,
                       Py_ssize_t first, Py_ssize_t last) {
    if (cps <= first + last) return put_chars(b, a, cps);
    Py_ssize_t head = cp_offset(s, n, cps, first);
    Py_ssize_t tail = cp_offset(s, n, cps, cps - last);
    if (buf_put(b, s, head) < 0) return -1;
    if (put_chars(b, a, cps - first - last) < 0) return -1;
    return buf_put(b, s + tail, n - tail);
}

static int keep_ends(Buf *b, const Action *a, const char *s, Py_ssize_t n, Py_ssize_t first,
                     Py_ssize_t last) {
    return keep_ends_n(b, a, s, n, count_cp(s, n), first, last);
}

/* cps and seps: text_stats of s */
static int keep_ends_sig_n(Buf *b, const Action *a, const char *s, Py_ssize_t n, Py_ssize_t cps,
                           Py_ssize_t seps, Py_ssize_t first, Py_ssize_t last) {
    if (seps == 0) return keep_ends_n(b, a, s, n, cps, first, last);
    Py_ssize_t sig = cps - seps;
    int all = sig <= first + last;
    Py_ssize_t k = 0, i = 0;
    while (i < n) {
        Py_ssize_t j = i + 1;
        while (j < n && is_cont((unsigned char)s[j])) j++;
        unsigned char ch = (unsigned char)s[i];
        if (ch == ' ' || ch == '-') {
            if (buf_byte(b, (char)ch) < 0) return -1;
        } else {
            int hide = all || (k >= first && k < sig - last);
            if (hide ? buf_put(b, a->mchar, a->mchar_len) : buf_put(b, s + i, j - i)) return -1;
            k++;
        }
        i = j;
    }
    return 0;
}

static int keep_ends_sig(Buf *b, const Action *a, const char *s, Py_ssize_t n, Py_ssize_t first,
                         Py_ssize_t last) {
    Py_ssize_t seps, cps = text_stats(s, n, &seps);
    return keep_ends_sig_n(b, a, s, n, cps, seps, first, last);
}

/* Code points of valid UTF-8 text, with the byte offset of each (off[n] = len).
   Names and addresses are short: their arrays live in the struct (no
   allocation), and only text longer than CPS_INLINE bytes (at most that many
   code points otherwise) goes to the heap. */
#define CPS_INLINE 96
typedef struct {
    uint32_t *cp;
    Py_ssize_t *off;
    Py_ssize_t n;
    uint32_t cp_in[CPS_INLINE];
    Py_ssize_t off_in[CPS_INLINE + 1];
} Cps;

static int decode_cps(Cps *d, const char *s, Py_ssize_t len) {
    if (len <= CPS_INLINE) {
        d->cp = d->cp_in;
        d->off = d->off_in;
    } else {
        d->cp = PyMem_Malloc(sizeof(uint32_t) * (size_t)(len + 1));
        d->off = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(len + 1));
        if (d->cp == NULL || d->off == NULL) return -1;
    }
    Py_ssize_t i = 0, k = 0;
    while (i < len) {
        const unsigned char *u = (const unsigned char *)s + i;
        uint32_t c;
        int m;
        if (u[0] < 0x80) {
            c = u[0];
            m = 1;
        } else if (u[0] < 0xE0) {
            c = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
            m = 2;
        } else if (u[0] < 0xF0) {
            c = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
            m = 3;
        } else {
            c = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
                ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
            m = 4;
        }
        d->cp[k] = c;
        d->off[k] = i;
        k++;
        i += m;
    }
    d->off[k] = len;
    d->n = k;
    return 0;
}

static void free_cps(Cps *d) {
    if (d->cp != d->cp_in) PyMem_Free(d->cp);
    if (d->off != d->off_in) PyMem_Free(d->off);
}

/* 复姓: pairs of code points, sorted, set once by set_surnames(). */
static uint64_t *surnames = NULL;
static Py_ssize_t nsurnames = 0;

static int is_compound(uint32_t a, uint32_t b) {
    uint64_t key = ((uint64_t)a << 32) | b;
    Py_ssize_t lo = 0, hi = nsurnames;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (surnames[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    return lo < nsurnames && surnames[lo] == key;
}

static int is_cjk(uint32_t c) {
    return (c >= 0x3400 && c <= 0x9FFF) || (c >= 0x20000 && c <= 0x3134F);
}

static int is_name_sep(uint32_t c) {
    return c == ' ' || c == 0xB7 || c == 0x2022 || c == 0x30FB || c == '.' || c == '-';
}

static int put_cp_range(Buf *b, const char *s, const Cps *d, Py_ssize_t from, Py_ssize_t to) {
    return buf_put(b, s + d->off[from], d->off[to] - d->off[from]);
}

static int cn_name(Buf *b, const Action *a, const char *s, Py_ssize_t len) {
    Cps d;
    if (decode_cps(&d, s, len) < 0) { free_cps(&d); return -1; }
    int rc = 0, cjk = 0;
    for (Py_ssize_t i = 0; i < d.n && !cjk; i++) cjk = is_cjk(d.cp[i]);
    if (d.n == 0) {
        rc = 0;
    } else if (cjk) {
        Py_ssize_t sur = (d.n >= 3 && is_compound(d.cp[0], d.cp[1])) ? 2 : 1;
        rc = put_cp_range(b, s, &d, 0, sur);
        for (Py_ssize_t i = sur; i < d.n && rc == 0; i++)
            rc = is_name_sep(d.cp[i]) ? put_cp_range(b, s, &d, i, i + 1)
                                      : buf_put(b, a->mchar, a->mchar_len);
    } else {
        int prev_sep = 1;
        for (Py_ssize_t i = 0; i < d.n && rc == 0; i++) {
            if (is_name_sep(d.cp[i])) {
                rc = put_cp_range(b, s, &d, i, i + 1);
                prev_sep = 1;
            } else {
                rc = prev_sep ? put_cp_range(b, s, &d, i, i + 1)
                              : buf_put(b, a->mchar, a->mchar_len);
                prev_sep = 0;
            }
        }
    }
    free_cps(&d);
    return rc;
}

/* presets.address: _UNIT is one character that is not \s, \d, 0-9, ０-９ or a
   street-level character; \s and \d as Python's re has them for str. */
static const uint32_t NOT_UNIT[] = {0x7701, 0x5E02, 0x533A, 0x53BF, 0x65D7, 0x9547, 0x4E61,
                                    0x6751, 0x8DEF, 0x8857, 0x9053, 0x5DF7, 0x53F7, 0x5F04,
                                    0x680B, 0x697C, 0x5BA4, 0x5355, 0x5143, 0x5E62, 0x5EA7,
                                    0x5C42, '#', ',', 0xFF0C};

static int not_unit_slow(uint32_t c) {
    if (Py_UNICODE_ISSPACE(c) || Py_UNICODE_ISDECIMAL(c)) return 1;
    if ((c >= '0' && c <= '9') || (c >= 0xFF10 && c <= 0xFF19)) return 1;
    for (size_t i = 0; i < sizeof NOT_UNIT / sizeof NOT_UNIT[0]; i++)
        if (NOT_UNIT[i] == c) return 1;
    return 0;
}

/* not_unit_slow for the BMP, a bit per code point, filled at import from the
   running Python's Unicode database (about a millisecond). */
static unsigned char not_unit_bmp[0x10000 / 8];

static void init_units(void) {
    for (uint32_t c = 0; c < 0x10000; c++)
        if (not_unit_slow(c)) not_unit_bmp[c >> 3] |= (unsigned char)(1u << (c & 7));
}

static inline int is_unit(uint32_t c) {
    if (c < 0x10000) return !((not_unit_bmp[c >> 3] >> (c & 7)) & 1);
    return !not_unit_slow(c);
}

static int cps_at(const Cps *d, Py_ssize_t pos, const uint32_t *lit, int n) {
    if (pos + n > d->n) return 0;
    for (int i = 0; i < n; i++)
        if (d->cp[pos + i] != lit[i]) return 0;
    return 1;
}

/* `UNIT{lo,8}?(?:suffixes)` at pos, lazily: the end, or -1. */
static Py_ssize_t admin_unit(const Cps *d, Py_ssize_t pos, int lo, const uint32_t *suf,
                             const int *suflen, int nsuf) {
    for (int n = 1; n <= 8; n++) {
        if (pos + n > d->n || !is_unit(d->cp[pos + n - 1])) return -1;
        if (n < lo) continue;
        Py_ssize_t at = pos + n;
        const uint32_t *p = suf;
        for (int k = 0; k < nsuf; k++) {
            if (cps_at(d, at, p, suflen[k])) return at + suflen[k];
            p += suflen[k];
        }
    }
    return -1;
}

static const uint32_t PROV_SUF[] = {0x7701, 0x81EA, 0x6CBB, 0x533A, 0x7279, 0x522B, 0x884C,
                                    0x653F, 0x533A}; /* 省 自治区 特别行政区 */
static const int PROV_LEN[] = {1, 3, 5};
static const uint32_t MUNI[] = {0x5317, 0x4EAC, 0x5E02, 0x5929, 0x6D25, 0x5E02, 0x4E0A,
                                0x6D77, 0x5E02, 0x91CD, 0x5E86, 0x5E02}; /* 北京市 天津市 上海市 重庆市 */
static const uint32_t CITY_SUF[] = {0x5E02, 0x81EA, 0x6CBB, 0x5DDE, 0x5730, 0x533A,
                                    0x76DF}; /* 市 自治州 地区 盟 */
static const int CITY_LEN[] = {1, 3, 2, 1};
static const uint32_t DIST_SUF[] = {0x533A, 0x53BF, 0x5E02, 0x65D7}; /* 区 县 市 旗 */
static const int DIST_LEN[] = {1, 1, 1, 1};
/* 小区 社区 园区 校区 景区 厂区 营区 街区 片区: not districts; and 新村 */
static const uint32_t NOT_DIST_FIRST[] = {0x5C0F, 0x793E, 0x56ED, 0x6821, 0x666F,
                                          0x5382, 0x8425, 0x8857, 0x7247};

static FM_INLINE int address(Buf *b, const Action *a, const char *s, Py_ssize_t len) {
    Cps d;
    if (decode_cps(&d, s, len) < 0) { free_cps(&d); return -1; }
    Py_ssize_t pos = admin_unit(&d, 0, 2, PROV_SUF, PROV_LEN, 3);
    if (pos < 0) {
        pos = 0;
        for (int k = 0; k < 4; k++)
            if (cps_at(&d, 0, MUNI + 3 * k, 3)) { pos = 3; break; }
    }
    Py_ssize_t city = admin_unit(&d, pos, 1, CITY_SUF, CITY_LEN, 4);
    if (city >= 0) pos = city;
    Py_ssize_t end = pos;
    Py_ssize_t dist = admin_unit(&d, pos, 1, DIST_SUF, DIST_LEN, 4);
    if (dist >= 0) {
        end = dist;
        uint32_t last = d.cp[dist - 1], before = dist - pos >= 2 ? d.cp[dist - 2] : 0;
        int not_district = 0;
        if (last == 0x533A && dist - pos >= 2)
            for (size_t i = 0; i < sizeof NOT_DIST_FIRST / sizeof NOT_DIST_FIRST[0]; i++)
                not_district |= before == NOT_DIST_FIRST[i];
        if (last == 0x6751 && before == 0x65B0) not_district = 1; /* 新村 */
        if (not_district) end = pos;
    }
    int rc = put_cp_range(b, s, &d, 0, end);
    if (rc == 0) rc = put_chars(b, a, d.n - end);
    free_cps(&d);
    return rc;
}

/* The mask of UTF-8 text s into b, per action. */
static int mask_text(Buf *b, const Action *a, const char *s, Py_ssize_t n) {
    switch (a->op) {
    case OP_MASK_ENDS:
        return keep_ends(b, a, s, n, a->first, a->last);
    case OP_MASK_SIG:
        return keep_ends_sig(b, a, s, n, a->first, a->last);
    case OP_MASK_CN_ID: {
        Py_ssize_t seps, cps = text_stats(s, n, &seps), last = a->last;
        if (last < 0) last = cps - seps == 15 ? 3 : 4;
        return keep_ends_sig_n(b, a, s, n, cps, seps, a->first < 0 ? 6 : a->first, last);
    }
    case OP_MASK_PHONE: {
        Py_ssize_t p = 0;
        if (n >= 3 && memcmp(s, "+86", 3) == 0) p = 3;
        else if (n >= 4 && memcmp(s, "0086", 4) == 0) p = 4;
        if (p && p < n && (s[p] == ' ' || s[p] == '-')) p++;
        if (p && buf_put(b, s, p) < 0) return -1;
        return keep_ends_sig(b, a, s + p, n - p, a->first, a->last);
    }
    case OP_MASK_EMAIL: {
        Py_ssize_t at = -1;
        for (Py_ssize_t i = n - 1; i >= 0; i--)
            if (s[i] == '@') { at = i; break; }
        if (at < 0) return keep_ends(b, a, s, n, a->first, 0);
        if (keep_ends(b, a, s, at, a->first, 0) < 0) return -1;
        return buf_put(b, s + at, n - at);
    }
    case OP_CN_NAME:
        return cn_name(b, a, s, n);
    case OP_ADDRESS:
        return address(b, a, s, n);
    case OP_HASH: {
        char h[2 + 64];
        hmac_hex(h, a->inner, a->outer, (const unsigned char *)s, (size_t)n, a->hash_len);
        return buf_put(b, h, 2 + a->hash_len);
    }
    }
    return -1;
}

/* ---- values -------------------------------------------------------- */

static int parse_value(Ctx *c, int ms, int allow, int emit, int rs);

static inline int next_index(const Program *p, int st, int64_t j) {
    return st < 0 ? -1 : lookup_idx(&p->states[st], j);
}

/* A Python value equal to what the reference decoder builds for the scalar
   token s[a:b) (tok: '"', 'n' number, 't', 'f', 'z' null). */
static PyObject *scalar_object(Ctx *c, int tok, Py_ssize_t a, Py_ssize_t b, int esc, int is_int) {
    const char *s = (const char *)c->s;
    switch (tok) {
    case '"':
        if (!esc) return PyUnicode_DecodeUTF8(s + a + 1, b - a - 2, "strict");
        c->tmp.len = 0;
        if (unescape(&c->tmp, c->s, a + 1, b - 1) < 0) return PyErr_NoMemory();
        return PyUnicode_DecodeUTF8(c->tmp.p, c->tmp.len, "strict");
    case 't': Py_RETURN_TRUE;
    case 'f': Py_RETURN_FALSE;
    case 'z': Py_RETURN_NONE;
    }
    PyObject *text = PyUnicode_FromStringAndSize(s + a, b - a);
    if (text == NULL) return NULL;
    if (is_int) {
        PyObject *v = PyLong_FromUnicodeObject(text, 10);
        Py_DECREF(text);
        return v;
    }
    PyObject *v = PyObject_CallOneArg(c->number_type, text);
    Py_DECREF(text);
    return v;
}

/* Serialise a transform's result; DECLINE for anything not faithfully writable. */
static int put_result(Ctx *c, PyObject *r) {
    if (r == Py_None) return buf_put(&c->out, "null", 4) < 0 ? DECLINE : OK;
    if (r == Py_True) return buf_put(&c->out, "true", 4) < 0 ? DECLINE : OK;
    if (r == Py_False) return buf_put(&c->out, "false", 5) < 0 ? DECLINE : OK;
    if (PyUnicode_CheckExact(r)) {
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(r, &n);
        if (u == NULL) { PyErr_Clear(); return DECLINE; }
        return put_json_string(&c->out, u, n) < 0 ? DECLINE : OK;
    }
    if (PyLong_CheckExact(r)) {
        PyObject *t = PyObject_Str(r);
        if (t == NULL) { PyErr_Clear(); return DECLINE; }
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(t, &n);
        int rc = (u == NULL || buf_put(&c->out, u, n) < 0) ? DECLINE : OK;
        Py_DECREF(t);
        if (u == NULL) PyErr_Clear();
        return rc;
    }
    if (Py_TYPE(r) == (PyTypeObject *)c->number_type) {
        PyObject *t = PyObject_GetAttrString(r, "text");
        if (t == NULL) { PyErr_Clear(); return DECLINE; }
        int rc = DECLINE;
        Py_ssize_t n;
        const char *u = PyUnicode_CheckExact(t) ? PyUnicode_AsUTF8AndSize(t, &n) : NULL;
        if (u != NULL && n > 0) {
            /* must be a JSON number, or it could inject structure */
            Ctx probe = *c;
            probe.s = (const unsigned char *)u;
            probe.n = n;
            probe.i = 0;
            int dummy;
            if (scan_number(&probe, &dummy) == OK && probe.i == n)
                rc = buf_put(&c->out, u, n) < 0 ? DECLINE : OK;
        }
        if (u == NULL) PyErr_Clear();
        Py_DECREF(t);
        return rc;
    }
    return DECLINE;
}

/* Apply a transform action to the scalar token s[a:b). */
static int transform_scalar(Ctx *c, const Action *act, int tok, Py_ssize_t a, Py_ssize_t b,
                            int esc, int is_int) {
    Buf *out = &c->out;
    if (act->op == OP_REDACT) return buf_put(out, MARKER, sizeof MARKER - 1) < 0 ? DECLINE : OK;
    if (act->op == OP_ROUND_INT) {
        if (tok == 'z') return buf_put(out, "null", 4) < 0 ? DECLINE : OK;
        if (tok == 't' || tok == 'f')
            return buf_put(out, MARKER, sizeof MARKER - 1) < 0 ? DECLINE : OK;
        const unsigned char *t = c->s + a;
        Py_ssize_t len = b - a, whole = 0;
        int plain = tok == 'n' && act->step <= 1000000000000000000LL;
        if (plain && !is_int) {
            /* a non-negative decimal without exponent: its whole part, floored */
            while (whole < len && t[whole] >= '0' && t[whole] <= '9') whole++;
            plain = whole < len && t[whole] == '.' && whole <= 18;
            for (Py_ssize_t k = whole + 1; plain && k < len; k++)
                plain = t[k] >= '0' && t[k] <= '9';
        } else if (plain) {
            whole = len;
            plain = len <= 18;
        }
        if (plain) {
            int neg = t[0] == '-';
            long long v = 0;
            for (Py_ssize_t k = neg; k < whole; k++) v = v * 10 + (t[k] - '0');
            if (neg) v = -v;
            long long q = v / act->step;
            if (v % act->step != 0 && v < 0) q--;
            return put_int(out, q * act->step) < 0 ? DECLINE : OK;
        }
        /* everything else as the reference does it */
    }
    if (act->op == OP_CALL || act->op == OP_ROUND_INT) {
        PyObject *v = scalar_object(c, tok, a, b, esc, is_int);
        if (v == NULL) { PyErr_Clear(); return DECLINE; }
        PyObject *r = PyObject_CallOneArg(act->call, v);
        Py_DECREF(v);
        if (r == NULL) { PyErr_Clear(); return DECLINE; }
        int rc = put_result(c, r);
        Py_DECREF(r);
        return rc;
    }
    /* masks and hash work on the value's text; null stays null */
    if (tok == 'z') return buf_put(out, "null", 4) < 0 ? DECLINE : OK;
    const char *text;
    Py_ssize_t len;
    if (tok == '"') {
        if (esc) {
            c->tmp.len = 0;
            if (unescape(&c->tmp, c->s, a + 1, b - 1) < 0) return DECLINE;
            text = c->tmp.p;
            len = c->tmp.len;
        } else {
            text = (const char *)c->s + a + 1;
            len = b - a - 2;
        }
    } else if (tok == 'n') {
        text = (const char *)c->s + a;
        len = b - a;
    } else if (act->op == OP_HASH) {
        text = tok == 't' ? "true" : "false";
        len = tok == 't' ? 4 : 5;
    } else {
        return buf_put(out, MARKER, sizeof MARKER - 1) < 0 ? DECLINE : OK; /* mask of a bool */
    }
    if (text != c->tmp.p && act->mchar_plain) {
        /* Text straight from the body (no escapes in it, so no '"', '\\' or
           control bytes) masked with a plain mask character: every mask writes
           pieces of the text, mask characters and ASCII, so the result needs no
           escaping and goes straight out between its quotes. */
        if (buf_byte(out, '"') < 0 || mask_text(out, act, text, len) < 0 ||
            buf_byte(out, '"') < 0)
            return DECLINE;
        return OK;
    }
    /* masked text goes through a second buffer, then out with escaping */
    Buf m = {NULL, 0, 0, NULL};
    if (text == c->tmp.p) {
        /* text lives in tmp; mask into a fresh buffer */
        if (mask_text(&m, act, text, len) < 0) { PyMem_Free(m.p); return DECLINE; }
    } else {
        c->tmp.len = 0;
        if (mask_text(&c->tmp, act, text, len) < 0) return DECLINE;
        int rc = put_json_string(out, c->tmp.p, c->tmp.len) < 0 ? DECLINE : OK;
        return rc;
    }
    int rc = put_json_string(out, m.p, m.len) < 0 ? DECLINE : OK;
    PyMem_Free(m.p);
    return rc;
}

/* Parse one scalar token at c->i: its kind and flags. */
static FM_INLINE int scan_scalar(Ctx *c, int *tok, int *esc, int *is_int) {
    const unsigned char *s = c->s;
    Py_ssize_t i = c->i, n = c->n;
    unsigned char ch = s[i];
    *esc = 0;
    *is_int = 0;
    if (ch == '"') { *tok = '"'; return scan_string_fast(c, esc); }
    if (ch == '-' || (ch >= '0' && ch <= '9')) { *tok = 'n'; return scan_number(c, is_int); }
    if (ch == 't' && n - i >= 4 && memcmp(s + i, "true", 4) == 0) { *tok = 't'; c->i += 4; return OK; }
    if (ch == 'f' && n - i >= 5 && memcmp(s + i, "false", 5) == 0) { *tok = 'f'; c->i += 5; return OK; }
    if (ch == 'n' && n - i >= 4 && memcmp(s + i, "null", 4) == 0) { *tok = 'z'; c->i += 4; return OK; }
    return DECLINE;
}

/* Copy a scalar token to the output, normalised as the reference writes it. */
static FM_INLINE int copy_scalar(Ctx *c, int tok, Py_ssize_t a, Py_ssize_t b, int esc) {
    if (tok == '"' && esc) {
        c->tmp.len = 0;
        if (unescape(&c->tmp, c->s, a + 1, b - 1) < 0) return DECLINE;
        return put_json_string(&c->out, c->tmp.p, c->tmp.len) < 0 ? DECLINE : OK;
    }
    return buf_put(&c->out, (const char *)c->s + a, b - a) < 0 ? DECLINE : OK;
}

/* Member names of one object, for the duplicate check. */
typedef struct {
    Py_ssize_t off, len;
} KeyRef;

static int check_duplicate(Ctx *c, KeyRef *keys, int nkeys, Py_ssize_t off, Py_ssize_t len) {
    const char *s = (const char *)c->s;
    for (int k = 0; k < nkeys; k++)
        if (keys[k].len == len && key_eq(s + keys[k].off, s + off, len)) return 1;
    return 0;
}

static void record_id(Ctx *c, int tok, Py_ssize_t a, Py_ssize_t b, int esc) {
    PyObject *v;
    if (tok == '"') {
        v = scalar_object(c, tok, a, b, esc, 0);
    } else if (tok == 'n') {
        v = PyUnicode_FromStringAndSize((const char *)c->s + a, b - a);
    } else {
        return; /* true/false/null: not an id */
    }
    if (v == NULL || PyList_Append(c->ids, v) < 0) c->error = 1;
    Py_XDECREF(v);
}

/* A scalar value at c->i (blanks skipped) in mask state ms; the contract of
   parse_value. Inlined into the member and element loops: most values are
   scalars, and a recursive call per value cost more than deciding it. */
static FM_INLINE int parse_scalar(Ctx *c, int ms, int allow, int emit) {
    const Program *p = c->prog;
    const Action *act = NULL;
    if (emit) {
        int out = ms >= 0 ? p->states[ms].outcome : -1;
        if (out >= 0) {
            c->counts[out]++;
            act = &p->actions[out];
            if (act->op == OP_REVEAL) act = NULL;
            else if (act->op == OP_DROP) emit = 0;
        } else if (allow) {
            c->counts[p->unlisted]++;
            emit = 0;
        }
    }
    int tok, esc, is_int;
    Py_ssize_t a = c->i;
    if (scan_scalar(c, &tok, &esc, &is_int) < 0) return DECLINE;
    if (!emit) return DROPPED; /* dropped, or emit was off: the parent ignores it */
    if (act != NULL) return transform_scalar(c, act, tok, a, c->i, esc, is_int);
    return copy_scalar(c, tok, a, c->i, esc);
}

static int parse_container(Ctx *c, int ms, int allow, int emit, int rs);

/* Value at c->i whose automaton states are ms (mask) and rs (records).
   Returns OK, DROPPED (the parent must remove the member) or DECLINE. */
static int parse_value(Ctx *c, int ms, int allow, int emit, int rs) {
    skip_ws(c);
    if (c->i >= c->n) return DECLINE;
    unsigned char ch = c->s[c->i];
    if (ch == '{' || ch == '[') return parse_container(c, ms, allow, emit, rs);
    return parse_scalar(c, ms, allow, emit);
}

/* The object or array at c->i; the contract of parse_value. */
static int parse_container(Ctx *c, int ms, int allow, int emit, int rs) {
    const Program *p = c->prog;
    unsigned char ch = c->s[c->i];
    const Action *act = NULL;
    int descend = 0; /* walk inside with ms */
    if (emit) {
        int out = ms >= 0 ? p->states[ms].outcome : -1;
        if (out >= 0) {
            c->counts[out]++;
            act = &p->actions[out];
            if (act->op == OP_REVEAL) {
                act = NULL;
                allow = 0;
                descend = p->states[ms].live;
            }
        } else if (ms >= 0 && p->states[ms].live) {
            descend = 1;
        } else if (allow) {
            c->counts[p->unlisted]++;
            emit = 0;
        }
    }
    int dropped = !emit; /* emit was on and is now off: the member goes */
    if (act != NULL) {
        if (act->op == OP_DROP) {
            emit = 0;
            dropped = 1;
        } else {
            /* structures cannot be masked: the marker, and nothing inside */
            if (buf_put(&c->out, MARKER, sizeof MARKER - 1) < 0) return DECLINE;
            emit = 0;
            dropped = 0;
        }
    }
    if (!descend) ms = -1;
    if (++c->depth > c->max_depth) return DECLINE;
    const Program *r = c->rec;
    int is_record = ch == '{' && rs >= 0 && r->states[rs].outcome >= 0;
    if (is_record) c->nrecords++;
    Py_ssize_t in = 0, kept = 0;
    c->i++;
    if (emit && buf_byte(&c->out, (char)ch) < 0) return DECLINE;
    skip_ws(c);
    if (ch == '{') {
        KeyRef small[32];
        KeyRef *keys = small;
        int nkeys = 0, cap = 32;
        uint64_t seen[2] = {0, 0}; /* names so far, by hash bit */
        int rc = OK;
        if (c->i < c->n && c->s[c->i] == '}') {
            c->i++;
        } else {
            for (;;) {
                skip_ws(c);
                if (c->i >= c->n || c->s[c->i] != '"') { rc = DECLINE; break; }
                int esc;
                Py_ssize_t ka = c->i;
                if (scan_string_fast(c, &esc) < 0 || esc) { rc = DECLINE; break; }
                Py_ssize_t kend = c->i, koff = ka + 1, klen = c->i - ka - 2;
                const char *k = (const char *)c->s + koff;
                /* one hash for both automata and the duplicate filter (128
                   bits); the exact check only on a filter hit */
                uint32_t h = key_hash(k, klen);
                uint64_t bit = 1ULL << (h & 63);
                if ((seen[(h >> 6) & 1] & bit) && check_duplicate(c, keys, nkeys, koff, klen)) {
                    rc = DECLINE;
                    break;
                }
                seen[(h >> 6) & 1] |= bit;
                if (nkeys == cap) {
                    KeyRef *nk = PyMem_Malloc(sizeof(KeyRef) * (size_t)cap * 2);
                    if (nk == NULL) { rc = DECLINE; break; }
                    memcpy(nk, keys, sizeof(KeyRef) * (size_t)nkeys);
                    if (keys != small) PyMem_Free(keys);
                    keys = nk;
                    cap *= 2;
                }
                keys[nkeys].off = koff;
                keys[nkeys].len = klen;
                nkeys++;
                skip_ws(c);
                if (c->i >= c->n || c->s[c->i] != ':') { rc = DECLINE; break; }
                c->i++;
                Py_ssize_t save = c->out.len;
                if (emit) {
                    /* [,]"name": in one go */
                    Py_ssize_t kl = kend - ka;
                    if (buf_reserve(&c->out, kl + 2) < 0) { rc = DECLINE; break; }
                    char *d = c->out.p + c->out.len;
                    if (kept) *d++ = ',';
                    if (kl <= 16) copy_small(d, (const char *)c->s + ka, kl);
                    else memcpy(d, c->s + ka, (size_t)kl);
                    d[kl] = ':';
                    c->out.len = d + kl + 1 - c->out.p;
                }
                int cms = ms < 0 ? -1 : lookup_key_h(&p->states[ms], k, klen, h);
                int crs = rs < 0 ? -1 : lookup_key_h(&r->states[rs], k, klen, h);
                int is_id = is_record && klen == c->id_len && key_eq(k, c->id_key, klen);
                skip_ws(c);
                if (c->i >= c->n) { rc = DECLINE; break; }
                Py_ssize_t va = c->i;
                unsigned char vc = c->s[va];
                int v = vc == '{' || vc == '[' ? parse_container(c, cms, allow, emit, crs)
                                               : parse_scalar(c, cms, allow, emit);
                if (v == DECLINE) { rc = DECLINE; break; }
                if (is_id && vc != '{' && vc != '[') {
                    /* the token parse_scalar just read and validated: s[va:c->i)
                       (transforms leave c->i); true, false and null are no ids */
                    int tok = vc == '"' ? '"' : vc == '-' || (vc >= '0' && vc <= '9') ? 'n' : 0;
                    int esc2 = tok == '"' && memchr(c->s + va + 1, '\\', (size_t)(c->i - va - 2));
                    record_id(c, tok, va, c->i, esc2);
                    if (c->error) { rc = DECLINE; break; }
                }
                in++;
                if (emit) {
                    if (v == DROPPED) c->out.len = save;
                    else kept++;
                }
                skip_ws(c);
                if (c->i >= c->n) { rc = DECLINE; break; }
                if (c->s[c->i] == ',') { c->i++; continue; }
                if (c->s[c->i] == '}') { c->i++; break; }
                rc = DECLINE;
                break;
            }
        }
        if (keys != small) PyMem_Free(keys);
        if (rc == DECLINE) return DECLINE;
    } else {
        if (c->i < c->n && c->s[c->i] == ']') {
            c->i++;
        } else {
            int64_t j = 0;
            for (;;) {
                Py_ssize_t save = c->out.len;
                if (emit && kept && buf_byte(&c->out, ',') < 0) return DECLINE;
                int cms = next_index(p, ms, j);
                int crs = r != NULL ? next_index(r, rs, j) : -1;
                skip_ws(c);
                if (c->i >= c->n) return DECLINE;
                unsigned char vc = c->s[c->i];
                int v = vc == '{' || vc == '[' ? parse_container(c, cms, allow, emit, crs)
                                               : parse_scalar(c, cms, allow, emit);
                if (v == DECLINE) return DECLINE;
                in++;
                j++;
                if (emit) {
                    if (v == DROPPED) c->out.len = save;
                    else kept++;
                }
                skip_ws(c);
                if (c->i >= c->n) return DECLINE;
                if (c->s[c->i] == ',') { c->i++; continue; }
                if (c->s[c->i] == ']') { c->i++; break; }
                return DECLINE;
            }
        }
    }
    c->depth--;
    if (emit && buf_byte(&c->out, ch == '{' ? '}' : ']') < 0) return DECLINE;
    if (emit && allow && descend && in && !kept) return DROPPED; /* an emptied skeleton */
    return dropped ? DROPPED : OK;
}

/* ------------------------------------------------------------------ */
/* Program construction                                                 */

static void program_dealloc(Program *self) {
    if (self->states != NULL) {
        for (int i = 0; i < self->nstates; i++) {
            PyMem_Free(self->states[i].ktab);
            PyMem_Free(self->states[i].idx);
            PyMem_Free(self->states[i].idx_target);
        }
        PyMem_Free(self->states);
    }
    PyMem_Free(self->actions);
    PyMem_Free(self->keybuf);
    Py_XDECREF(self->refs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ProgramType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._fastmask.Program",
    .tp_basicsize = sizeof(Program),
    .tp_dealloc = (destructor)program_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A compiled plan (see gateway.rules.native).",
};

static int as_int(PyObject *o, long *v) {
    *v = PyLong_AsLong(o);
    return (*v == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int parse_action(PyObject *t, Action *a, PyObject *refs) {
    /* (op, first, last, char, inner_state_bytes, outer_state_bytes, hash_len, callable) */
    memset(a, 0, sizeof *a);
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 8) {
        PyErr_SetString(PyExc_TypeError, "action: expected an 8-tuple");
        return -1;
    }
    long op, first, last, hl;
    if (as_int(PyTuple_GET_ITEM(t, 0), &op) || as_int(PyTuple_GET_ITEM(t, 2), &last) ||
        as_int(PyTuple_GET_ITEM(t, 6), &hl))
        return -1;
    if (op == OP_ROUND_INT) {
        a->step = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 1));
        if (a->step == -1 && PyErr_Occurred()) return -1;
        if (a->step <= 0) {
            PyErr_SetString(PyExc_ValueError, "action: round step");
            return -1;
        }
        first = 0;
    } else if (as_int(PyTuple_GET_ITEM(t, 1), &first)) {
        return -1;
    }
    if (op < OP_REVEAL || op > OP_ADDRESS || hl < 0 || hl > 64 || first > 1000 || last > 1000) {
        PyErr_SetString(PyExc_ValueError, "action: bad parameters");
        return -1;
    }
    a->op = (int)op;
    a->first = (int)first;
    a->last = (int)last;
    a->hash_len = (int)hl;
    Py_ssize_t n;
    const char *ch = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(t, 3), &n);
    if (ch == NULL) return -1;
    if (n < 1 || n > 4) {
        PyErr_SetString(PyExc_ValueError, "action: mask char");
        return -1;
    }
    memcpy(a->mchar, ch, (size_t)n);
    a->mchar_len = (int)n;
    a->mchar_plain = 1;
    for (Py_ssize_t k = 0; k < n; k++)
        if ((unsigned char)ch[k] < 0x20 || ch[k] == '"' || ch[k] == '\\') a->mchar_plain = 0;
    if (op == OP_HASH) {
        for (int w = 0; w < 2; w++) {
            PyObject *pad = PyTuple_GET_ITEM(t, 4 + w);
            if (!PyBytes_Check(pad) || PyBytes_GET_SIZE(pad) != 64) {
                PyErr_SetString(PyExc_ValueError, "action: hash pads must be 64 bytes");
                return -1;
            }
            uint32_t *st = w == 0 ? a->inner : a->outer;
            memcpy(st, H256, sizeof H256);
            sha256_block(st, (const unsigned char *)PyBytes_AS_STRING(pad));
        }
    }
    if (op == OP_CALL || op == OP_ROUND_INT) {
        /* OP_ROUND_INT: `first` is the step; the callable does what it cannot */
        PyObject *f = PyTuple_GET_ITEM(t, 7);
        if (!PyCallable_Check(f)) {
            PyErr_SetString(PyExc_TypeError, "action: not callable");
            return -1;
        }
        if (PyList_Append(refs, f) < 0) return -1;
        a->call = f;
    }
    return 0;
}

/* compile(states, start, actions, unlisted, allow)
   states: list of (outcome, live, other, {name_bytes: target}, {index: target}) */
static PyObject *fm_compile(PyObject *mod, PyObject *args) {
    PyObject *states, *actions;
    int start, unlisted, allow;
    if (!PyArg_ParseTuple(args, "O!iO!ip", &PyList_Type, &states, &start, &PyList_Type,
                          &actions, &unlisted, &allow))
        return NULL;
    Program *p = PyObject_New(Program, &ProgramType);
    if (p == NULL) return NULL;
    p->states = NULL;
    p->actions = NULL;
    p->keybuf = NULL;
    p->refs = PyList_New(0);
    p->nstates = (int)PyList_GET_SIZE(states);
    p->nactions = (int)PyList_GET_SIZE(actions);
    p->start = start;
    p->unlisted = unlisted;
    p->allow = allow;
    if (p->refs == NULL) goto fail;
    if (start < -1 || start >= p->nstates || unlisted < 0 || unlisted > p->nactions) {
        PyErr_SetString(PyExc_ValueError, "compile: bad start or unlisted");
        goto fail;
    }
    p->actions = PyMem_Calloc((size_t)p->nactions + 1, sizeof(Action));
    p->states = PyMem_Calloc((size_t)p->nstates + 1, sizeof(State));
    if (p->actions == NULL || p->states == NULL) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < p->nactions; i++)
        if (parse_action(PyList_GET_ITEM(actions, i), &p->actions[i], p->refs) < 0) goto fail;
    /* key storage */
    Py_ssize_t total = 0;
    for (int i = 0; i < p->nstates; i++) {
        PyObject *t = PyList_GET_ITEM(states, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 5 || !PyDict_Check(PyTuple_GET_ITEM(t, 3)) ||
            !PyDict_Check(PyTuple_GET_ITEM(t, 4))) {
            PyErr_SetString(PyExc_TypeError, "state: expected (outcome, live, other, keys, idx)");
            goto fail;
        }
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(PyTuple_GET_ITEM(t, 3), &pos, &k, &v)) {
            if (!PyBytes_Check(k)) {
                PyErr_SetString(PyExc_TypeError, "state: names must be bytes");
                goto fail;
            }
            total += PyBytes_GET_SIZE(k);
        }
    }
    p->keybuf = PyMem_Malloc((size_t)total + 1);
    if (p->keybuf == NULL) { PyErr_NoMemory(); goto fail; }
    char *kb = p->keybuf;
    for (int i = 0; i < p->nstates; i++) {
        PyObject *t = PyList_GET_ITEM(states, i);
        State *st = &p->states[i];
        long outcome, live, other;
        if (as_int(PyTuple_GET_ITEM(t, 0), &outcome) || as_int(PyTuple_GET_ITEM(t, 1), &live) ||
            as_int(PyTuple_GET_ITEM(t, 2), &other))
            goto fail;
        if (outcome < -1 || outcome >= p->nactions + 1 || other < -1 || other >= p->nstates) {
            PyErr_SetString(PyExc_ValueError, "state: out of range");
            goto fail;
        }
        st->outcome = (int)outcome;
        st->live = live != 0;
        st->other = (int)other;
        PyObject *keys = PyTuple_GET_ITEM(t, 3), *idx = PyTuple_GET_ITEM(t, 4);
        Py_ssize_t nk = PyDict_GET_SIZE(keys);
        if (nk) {
            uint32_t size = 8;
            while (size < (uint32_t)nk * 2) size <<= 1;
            st->ktab = PyMem_Calloc(size, sizeof(KeyEnt));
            if (st->ktab == NULL) { PyErr_NoMemory(); goto fail; }
            st->kmask = size - 1;
            PyObject *k, *v;
            Py_ssize_t pos = 0;
            while (PyDict_Next(keys, &pos, &k, &v)) {
                long target;
                if (as_int(v, &target)) goto fail;
                if (target < 0 || target >= p->nstates) {
                    PyErr_SetString(PyExc_ValueError, "state: target out of range");
                    goto fail;
                }
                Py_ssize_t len = PyBytes_GET_SIZE(k);
                memcpy(kb, PyBytes_AS_STRING(k), (size_t)len);
                uint32_t h = key_hash(kb, len);
                uint32_t j = h & st->kmask;
                while (st->ktab[j].key != NULL) j = (j + 1) & st->kmask;
                st->ktab[j].key = kb;
                st->ktab[j].len = len;
                st->ktab[j].hash = h;
                st->ktab[j].target = (int)target;
                kb += len;
            }
        }
        Py_ssize_t ni = PyDict_GET_SIZE(idx);
        if (ni) {
            st->idx = PyMem_Malloc(sizeof(int64_t) * (size_t)ni);
            st->idx_target = PyMem_Malloc(sizeof(int) * (size_t)ni);
            if (st->idx == NULL || st->idx_target == NULL) { PyErr_NoMemory(); goto fail; }
            PyObject *k, *v;
            Py_ssize_t pos = 0;
            int m = 0;
            while (PyDict_Next(idx, &pos, &k, &v)) {
                long long j = PyLong_AsLongLong(k);
                long target;
                if ((j == -1 && PyErr_Occurred()) || as_int(v, &target)) goto fail;
                if (j < 0 || target < 0 || target >= p->nstates) {
                    PyErr_SetString(PyExc_ValueError, "state: index out of range");
                    goto fail;
                }
                st->idx[m] = j;
                st->idx_target[m] = (int)target;
                m++;
            }
            st->nidx = m;
        }
    }
    return (PyObject *)p;
fail:
    Py_DECREF(p);
    return NULL;
}

/* mask(program, records_program | None, id_key bytes | None, body, max_depth, number_type)
   -> (masked bytes, counts list, records int, ids list) | None */
/* The records program and id key of a mask()/mask_elements() call (None: no
   records), with the records state it starts in checked; -1 with an exception. */
static int set_records(Ctx *c, PyObject *rec_o, PyObject *idk, int rs) {
    if (rec_o == Py_None) return 0;
    if (!PyObject_TypeCheck(rec_o, &ProgramType) || !PyBytes_Check(idk)) {
        PyErr_SetString(PyExc_TypeError, "records program needs an id key");
        return -1;
    }
    c->rec = (Program *)rec_o;
    c->id_key = PyBytes_AS_STRING(idk);
    c->id_len = PyBytes_GET_SIZE(idk);
    if (rs < -1 || rs >= c->rec->nstates) {
        PyErr_SetString(PyExc_ValueError, "records state out of range");
        return -1;
    }
    return 0;
}

static PyObject *fm_mask(PyObject *mod, PyObject *args) {
    Program *prog;
    PyObject *rec_o, *idk, *number_type;
    Py_buffer body;
    int max_depth;
    /* element mode (ms given): one value starting in mask state ms (-1: none),
       records state rs, allow-list flag; any JSON value; says whether it goes */
    int ms = -2, rs0 = -1, allow = 0;
    if (!PyArg_ParseTuple(args, "O!OOy*iO|iii", &ProgramType, &prog, &rec_o, &idk, &body,
                          &max_depth, &number_type, &ms, &rs0, &allow))
        return NULL;
    int element = ms != -2;
    if (element && (ms < -1 || ms >= prog->nstates)) {
        PyErr_SetString(PyExc_ValueError, "mask: state out of range");
        PyBuffer_Release(&body);
        return NULL;
    }
    Ctx c;
    memset(&c, 0, sizeof c);
    c.s = body.buf;
    c.n = body.len;
    c.max_depth = max_depth;
    c.prog = prog;
    c.number_type = number_type;
    PyObject *result = NULL;
    if (set_records(&c, rec_o, idk, rs0) < 0) {
        PyBuffer_Release(&body);
        return NULL;
    }
    c.counts = PyMem_Calloc((size_t)prog->nactions + 1, sizeof(Py_ssize_t));
    c.ids = PyList_New(0);
    if (c.counts == NULL || c.ids == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* The output is a bytes object written in place (no final copy), about the
       size of the input: start there, so a large body is not regrown. */
    c.out.obj = PyBytes_FromStringAndSize(NULL, c.n + 16);
    if (c.out.obj == NULL) goto done;
    c.out.p = PyBytes_AS_STRING(c.out.obj);
    c.out.cap = c.n + 16;
    skip_ws(&c);
    int rc = DECLINE;
    if (element) {
        rc = parse_value(&c, ms, allow, 1, c.rec != NULL ? rs0 : -1);
        if (rc != DECLINE) {
            skip_ws(&c);
            if (c.i != c.n) rc = DECLINE;
        }
        if (rc == DROPPED) c.out.len = 0;
    } else if (c.i < c.n && (c.s[c.i] == '{' || c.s[c.i] == '[') && prog->start >= 0 &&
               prog->states[prog->start].outcome < 0 && prog->states[prog->start].live) {
        int rs = c.rec != NULL ? c.rec->start : -1;
        rc = parse_value(&c, prog->start, prog->allow, 1, rs);
        if (rc != DECLINE) {
            skip_ws(&c);
            if (c.i != c.n) rc = DECLINE;
        }
    }
    if (c.error) goto done; /* exception set */
    if (rc == DECLINE) {
        if (PyErr_Occurred()) PyErr_Clear();
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    /* the root is never removed: an emptied root skeleton is written as such */
    PyObject *counts = PyList_New(prog->nactions + 1);
    if (counts == NULL) goto done;
    for (int i = 0; i <= prog->nactions; i++) {
        PyObject *v = PyLong_FromSsize_t(c.counts[i]);
        if (v == NULL) { Py_DECREF(counts); goto done; }
        PyList_SET_ITEM(counts, i, v);
    }
    if (_PyBytes_Resize(&c.out.obj, c.out.len) < 0) { Py_DECREF(counts); goto done; }
    if (element)
        result = Py_BuildValue("(ONnOO)", c.out.obj, counts, c.nrecords, c.ids,
                               rc == DROPPED ? Py_True : Py_False);
    else
        result = Py_BuildValue("(ONnO)", c.out.obj, counts, c.nrecords, c.ids); /* N: steals */
done:
    Py_XDECREF(c.out.obj);
    PyMem_Free(c.tmp.p);
    PyMem_Free(c.counts);
    Py_XDECREF(c.ids);
    PyBuffer_Release(&body);
    return result;
}

/* step(program, state, name bytes | index) -> state (-1: none) */
static PyObject *fm_step(PyObject *mod, PyObject *args) {
    Program *p;
    int st;
    PyObject *key;
    if (!PyArg_ParseTuple(args, "O!iO", &ProgramType, &p, &st, &key)) return NULL;
    if (st < -1 || st >= p->nstates) {
        PyErr_SetString(PyExc_ValueError, "step: state out of range");
        return NULL;
    }
    if (st < 0) return PyLong_FromLong(-1);
    if (PyBytes_Check(key))
        return PyLong_FromLong(lookup_key(&p->states[st], PyBytes_AS_STRING(key),
                                          PyBytes_GET_SIZE(key)));
    long long j = PyLong_AsLongLong(key);
    if (j == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(lookup_idx(&p->states[st], j));
}

/* state_info(program, state) -> (outcome action index or -1, live, start) */
static PyObject *fm_state_info(PyObject *mod, PyObject *args) {
    Program *p;
    int st;
    if (!PyArg_ParseTuple(args, "O!i", &ProgramType, &p, &st)) return NULL;
    if (st < -1 || st >= p->nstates) {
        PyErr_SetString(PyExc_ValueError, "state_info: state out of range");
        return NULL;
    }
    if (st < 0) return Py_BuildValue("(iii)", -1, 0, p->start);
    return Py_BuildValue("(iii)", p->states[st].outcome, p->states[st].live, p->start);
}

/* End of the JSON value starting at pos (after whitespace) in s[0:n), -1 when
   the buffer ends first (more is needed), -2 when it is malformed on its face.
   Brackets and strings only: the value itself is validated when it is masked. */
static Py_ssize_t value_end_at(const unsigned char *s, Py_ssize_t n, Py_ssize_t pos, int final) {
    Py_ssize_t i = pos;
    if (i < 0) i = n;
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++;
    if (i >= n) return -1;
    if (s[i] == '{' || s[i] == '[' || s[i] == '"') {
        Py_ssize_t depth = 0;
        for (;;) {
            if (i >= n) return -1;
            unsigned char ch = s[i];
            if (ch == '"') {
                i++;
                for (;;) {
                    const unsigned char *q = memchr(s + i, '"', (size_t)(n - i));
                    if (q == NULL) return -1;
                    Py_ssize_t k = q - s, bs = 0;
                    while (k - 1 - bs >= i && s[k - 1 - bs] == '\\') bs++;
                    i = k + 1;
                    if (bs % 2 == 0) break;
                }
                if (depth == 0) return i;
                continue;
            }
            if (ch == '{' || ch == '[') {
                if (++depth > 100000) return -2;
            } else if (ch == '}' || ch == ']') {
                if (--depth < 0) return -2;
                if (depth == 0) return i + 1;
            }
            i++;
        }
    }
    while (i < n && ((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
                     s[i] == '-' || s[i] == '+' || s[i] == '.' || s[i] == 'E'))
        i++;
    if (i == pos || (i < n && s[i] > ' ' && s[i] != ',' && s[i] != ']' && s[i] != '}')) return -2;
    if (i < n || final) return i;
    return -1;
}

/* value_end(buffer, pos, final) -> end | -1 | -2 (value_end_at) */
static PyObject *fm_value_end(PyObject *mod, PyObject *args) {
    Py_buffer b;
    Py_ssize_t pos;
    int final;
    if (!PyArg_ParseTuple(args, "y*np", &b, &pos, &final)) return NULL;
    Py_ssize_t r = value_end_at(b.buf, b.len, pos, final);
    PyBuffer_Release(&b);
    return PyLong_FromSsize_t(r);
}

/* The element loop of a streamed records array (gateway/streaming.py), so a
   stream does not pay a Python round trip per element.

   Where the array stands between calls: */
enum {
    EL_FIRST = 0, /* after '[': an element or ']' */
    EL_NEXT,      /* after ',': an element */
    EL_AFTER,     /* after an element: ',' or ']' */
    EL_CLOSED     /* ']' consumed (returned only) */
};

/* mask_elements(program, records | None, id_key | None, buffer, pos, final, number_type,
                 array state, records array state, allow, max_depth, index, kept, where)
   -> (out, pos, index, kept, where, counts, records, ids, failed)

   From pos, every complete element is masked exactly as mask() masks it in
   element mode over the span value_end() gives it, in the states step() gives
   element `index` under the array's states; kept elements are written with
   their ',' separators (kept: how many went out before). It stops when it
   needs more input (where: the state to resume in, pos: where to resume), at
   the ']' (EL_CLOSED, pos past it), or at the first element or separator it
   cannot answer for (failed: 1, out empty, pos meaningless). counts, records
   and ids cover exactly the elements masked before the stop, as the per-element
   calls would have added them; a failed element adds nothing. (How: most
   elements are parsed once, their end found by the parse; see the loop.) */
static PyObject *fm_mask_elements(PyObject *mod, PyObject *args) {
    Program *prog;
    PyObject *rec_o, *idk, *number_type;
    Py_buffer body;
    Py_ssize_t pos;
    int final, ms_arr, rs_arr, allow, max_depth, where;
    long long index;
    Py_ssize_t kept;
    if (!PyArg_ParseTuple(args, "O!OOy*npOiipiLni", &ProgramType, &prog, &rec_o, &idk, &body,
                          &pos, &final, &number_type, &ms_arr, &rs_arr, &allow, &max_depth,
                          &index, &kept, &where))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t *total = NULL;
    Ctx c;
    memset(&c, 0, sizeof c);
    if (ms_arr < -1 || ms_arr >= prog->nstates || pos < 0 || pos > body.len || index < 0 ||
        kept < 0 || where < EL_FIRST || where > EL_AFTER) {
        PyErr_SetString(PyExc_ValueError, "mask_elements: argument out of range");
        goto done;
    }
    if (set_records(&c, rec_o, idk, rs_arr) < 0) goto done;
    c.max_depth = max_depth;
    c.prog = prog;
    c.number_type = number_type;
    const unsigned char *s = body.buf;
    Py_ssize_t n = body.len, i = pos;
    size_t nc = (size_t)prog->nactions + 1;
    /* counts of the element being masked (c.counts), added to total once it
       is through: a failed element must count nothing */
    c.counts = PyMem_Calloc(nc, sizeof(Py_ssize_t));
    total = PyMem_Calloc(nc, sizeof(Py_ssize_t));
    c.ids = PyList_New(0);
    if (c.counts == NULL || total == NULL || c.ids == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t nrecords = 0, ndone = 0;
    int failed = 0;
    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++;
        if (i >= n) break; /* more input needed, in the same state */
        if (where == EL_AFTER) {
            if (s[i] == ',') {
                i++;
                where = EL_NEXT;
                continue;
            }
            if (s[i] == ']') {
                i++;
                where = EL_CLOSED;
                break;
            }
            failed = 1;
            break;
        }
        if (where == EL_FIRST && s[i] == ']') {
            i++;
            where = EL_CLOSED;
            break;
        }
        /* One pass where the element must be complete: it is parsed and masked
           over the rest of the buffer, and ends where the parse stops. Only an
           element that may be unfinished (the first of a call that is not final:
           the one a previous call left waiting, possibly a large one fed in
           pieces) has its end found first, as before. A container or string
           that parses ends where value_end_at ends it (its brackets and quotes
           are those value_end_at matches; depth stays within max_depth), and
           the parse reads the same bytes as over that slice; one that does not
           parse is looked at as before: unfinished (-1), malformed (-2), or
           masked over its slice (which declines again). Scalars: their end
           depends on what follows and on `final`, so always as before. */
        unsigned char c0 = s[i];
        int one_pass = (final || ndone > 0) && (c0 == '{' || c0 == '[' || c0 == '"') &&
                       max_depth <= 100000;
        Py_ssize_t end = -1;
        if (!one_pass) {
            end = value_end_at(s, n, i, final);
            if (end == -1) break;
            if (end == -2) {
                failed = 1;
                break;
            }
        }
        if (c.out.obj == NULL) {
            /* The output is about the size of the input, as for mask(); made once an
               element is complete (or, in one pass, once one has been), so feeds of one
               large unfinished element (that wait for more) do not each allocate its
               size again. */
            c.out.obj = PyBytes_FromStringAndSize(NULL, n - i + 16);
            if (c.out.obj == NULL) goto done;
            c.out.p = PyBytes_AS_STRING(c.out.obj);
            c.out.cap = n - i + 16;
        }
        int ms = ms_arr < 0 ? -1 : lookup_idx(&prog->states[ms_arr], index);
        int rs = c.rec != NULL && rs_arr >= 0 ? lookup_idx(&c.rec->states[rs_arr], index) : -1;
        Py_ssize_t save = c.out.len, nids = PyList_GET_SIZE(c.ids), nrec = c.nrecords;
        int rc, more = 0;
        for (;;) {
            /* end < 0: over the rest of the buffer; else the element alone, as mask()
               sees its slice: nothing outside is read */
            c.s = s + i;
            c.n = (end < 0 ? n : end) - i;
            c.i = 0;
            c.depth = 0;
            memset(c.counts, 0, nc * sizeof(Py_ssize_t));
            rc = DECLINE;
            if (kept == 0 || buf_byte(&c.out, ',') == 0) {
                rc = parse_value(&c, ms, allow, 1, rs);
                if (rc != DECLINE) {
                    if (end < 0) {
                        end = i + c.i;
                    } else {
                        skip_ws(&c);
                        if (c.i != c.n) rc = DECLINE;
                    }
                }
            }
            if (c.error) goto done; /* a Python exception is set (memory) */
            if (rc != DECLINE) break;
            if (PyErr_Occurred()) PyErr_Clear();
            c.out.len = save;
            c.nrecords = nrec;
            if (PyList_SetSlice(c.ids, nids, PyList_GET_SIZE(c.ids), NULL) < 0) goto done;
            if (end >= 0 || c.out.obj == NULL) break; /* declined over its slice, or out of memory */
            end = value_end_at(s, n, i, final);
            if (end == -1) {
                more = 1;
                break;
            }
            if (end == -2) break;
        }
        if (more) break; /* more input needed: nothing of it was kept */
        if (rc == DECLINE) {
            failed = 1;
            break;
        }
        ndone++;
        for (size_t k = 0; k < nc; k++) total[k] += c.counts[k];
        if (rc == DROPPED) c.out.len = save;
        else kept++;
        index++;
        i = end;
        where = EL_AFTER;
    }
    nrecords = c.nrecords;
    if (failed) c.out.len = 0; /* nothing of a failed call goes out */
    PyObject *counts = PyList_New((Py_ssize_t)nc);
    if (counts == NULL) goto done;
    for (size_t k = 0; k < nc; k++) {
        PyObject *v = PyLong_FromSsize_t(total[k]);
        if (v == NULL) { Py_DECREF(counts); goto done; }
        PyList_SET_ITEM(counts, (Py_ssize_t)k, v);
    }
    if (c.out.obj == NULL) {
        /* no element was complete, or buf_grow failed (and freed it: the element
           was declined, as mask() does) */
        c.out.obj = PyBytes_FromStringAndSize(NULL, 0);
        if (c.out.obj == NULL) { Py_DECREF(counts); goto done; }
    } else if (_PyBytes_Resize(&c.out.obj, c.out.len) < 0) {
        Py_DECREF(counts);
        goto done;
    }
    result = Py_BuildValue("(OnLniNnOi)", c.out.obj, i, index, kept, where, counts, nrecords,
                           c.ids, failed); /* N: steals counts */
done:
    Py_XDECREF(c.out.obj);
    PyMem_Free(c.tmp.p);
    PyMem_Free(c.counts);
    PyMem_Free(total);
    Py_XDECREF(c.ids);
    PyBuffer_Release(&body);
    return result;
}

static PyObject *fm_hmac_hex(PyObject *mod, PyObject *args) {
    /* hmac_hex(inner_pad, outer_pad, msg) -> 64 hex digits: for tests */
    Py_buffer ip, op, msg;
    int portable = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*|p", &ip, &op, &msg, &portable)) return NULL;
    void (*saved)(uint32_t *, const unsigned char *) = sha256_compress;
    if (portable) sha256_compress = sha256_block;
    PyObject *r = NULL;
    if (ip.len == 64 && op.len == 64) {
        uint32_t si[8], so[8];
        memcpy(si, H256, sizeof H256);
        memcpy(so, H256, sizeof H256);
        sha256_block(si, ip.buf);
        sha256_block(so, op.buf);
        char h[2 + 64]; /* the path of the hash action */
        hmac_hex(h, si, so, msg.buf, (size_t)msg.len, 64);
        r = PyUnicode_FromStringAndSize(h + 2, 64);
        sha256_compress = saved;
    } else {
        PyErr_SetString(PyExc_ValueError, "pads must be 64 bytes");
    }
    PyBuffer_Release(&ip);
    PyBuffer_Release(&op);
    PyBuffer_Release(&msg);
    return r;
}

static int cmp_u64(const void *x, const void *y) {
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static PyObject *fm_set_surnames(PyObject *mod, PyObject *arg) {
    /* set_surnames(iterable of two-character str) */
    PyObject *seq = PySequence_Fast(arg, "set_surnames: expected a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint64_t *tab = PyMem_Malloc(sizeof(uint64_t) * (size_t)(n + 1));
    if (tab == NULL) { Py_DECREF(seq); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(o) || PyUnicode_GET_LENGTH(o) != 2) {
            PyMem_Free(tab);
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "set_surnames: two characters each");
            return NULL;
        }
        tab[i] = ((uint64_t)PyUnicode_ReadChar(o, 0) << 32) | PyUnicode_ReadChar(o, 1);
    }
    Py_DECREF(seq);
    qsort(tab, (size_t)n, sizeof(uint64_t), cmp_u64);
    PyMem_Free(surnames);
    surnames = tab;
    nsurnames = n;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_surnames", fm_set_surnames, METH_O, "set_surnames(two-character strings)"},
    {"compile", fm_compile, METH_VARARGS, "compile(states, start, actions, unlisted, allow)"},
    {"mask", fm_mask, METH_VARARGS,
     "mask(program, records, id_key, body, max_depth, number_type) -> tuple | None"},
    {"step", fm_step, METH_VARARGS, "step(program, state, name | index) -> state"},
    {"state_info", fm_state_info, METH_VARARGS, "state_info(program, state) -> (outcome, live, start)"},
    {"value_end", fm_value_end, METH_VARARGS, "value_end(buffer, pos, final) -> end | -1 | -2"},
    {"mask_elements", fm_mask_elements, METH_VARARGS,
     "mask_elements(program, records, id_key, buffer, pos, final, number_type, array_state,"
     " records_array_state, allow, max_depth, index, kept, where) -> tuple"},
    {"hmac_hex", fm_hmac_hex, METH_VARARGS, "HMAC-SHA256 from key pads (tests)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "gateway._fastmask",
                                    "One-pass native masking (see gateway.rules.native).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastmask(void) {
    if (PyType_Ready(&ProgramType) < 0) return NULL;
    init_units();
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL) return NULL;
#ifdef HAVE_SHA_NI_CODE
    if (cpu_has_sha_ni()) sha256_compress = sha256_block_ni;
#endif
    if (PyModule_AddStringConstant(m, "SHA256", sha256_compress == sha256_block ? "portable"
                                                                               : "sha-ni") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ProgramType);
    if (PyModule_AddObject(m, "Program", (PyObject *)&ProgramType) < 0) {
        Py_DECREF(&ProgramType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
