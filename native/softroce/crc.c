/* CRC-32 (the Ethernet/zlib polynomial, bit-reflected) for the ICRC, folded with
 * carry-less multiplication (PCLMULQDQ) where the CPU has it: the method of Intel's
 * "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ" (Gopal et al., 2009),
 * whose constants for this polynomial are below. Pieces under 64 bytes (the headers of
 * every frame's ICRC, several a frame) go through tables eight bytes at a time: zlib takes
 * them a byte at a time below 47 bytes, and that was 6% of a bulk sender's CPU. Everything
 * else, and every CPU other than x86-64, goes through zlib's crc32. sr_crc32_selftest()
 * checks that all of them agree. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

extern unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len);

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("pclmul,sse4.1"))) static uint32_t fold_crc(const uint8_t *buf, size_t len, uint32_t crc) {
    /* len >= 64 and a multiple of 16; crc is the inverted running value */
    static const uint64_t k1k2[2] __attribute__((aligned(16))) = {0x0154442bd4ull, 0x01c6e41596ull};
    static const uint64_t k3k4[2] __attribute__((aligned(16))) = {0x01751997d0ull, 0x00ccaa009eull};
    static const uint64_t k5k0[2] __attribute__((aligned(16))) = {0x0163cd6124ull, 0x0000000000ull};
    static const uint64_t poly[2] __attribute__((aligned(16))) = {0x01db710641ull, 0x01f7011641ull};
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;

    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = _mm_load_si128((const __m128i *)k1k2);
    buf += 64;
    len -= 64;
    while (len >= 64) { /* four lanes, 64 bytes a round */
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        buf += 64;
        len -= 64;
    }
    /* fold the four lanes into one */
    x0 = _mm_load_si128((const __m128i *)k3k4);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }
    /* 128 bits to 64, then Barrett reduction to 32 */
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_loadl_epi64((const __m128i *)k5k0);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_load_si128((const __m128i *)poly);
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

static int have_pclmul = -1;

/* slicing by eight: t8[k][n] is the CRC of byte n followed by k zero bytes */
static uint32_t t8[8][256];
static int small_ok; /* the tables are made (and agree with zlib) */

static void make_tables(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        t8[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++) t8[k][n] = (t8[k - 1][n] >> 8) ^ t8[0][t8[k - 1][n] & 0xFF];
    small_ok = 1;
}

static uint32_t crc_small(uint32_t crc, const uint8_t *p, size_t len) {
    crc = ~crc;
    while (len >= 8) { /* x86-64 is little-endian: the first byte is the low one */
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        a ^= crc;
        crc = t8[7][a & 0xFF] ^ t8[6][(a >> 8) & 0xFF] ^ t8[5][(a >> 16) & 0xFF] ^ t8[4][a >> 24] ^ t8[3][b & 0xFF] ^
              t8[2][(b >> 8) & 0xFF] ^ t8[1][(b >> 16) & 0xFF] ^ t8[0][b >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) crc = (crc >> 8) ^ t8[0][(crc ^ *p++) & 0xFF];
    return ~crc;
}
#endif

uint32_t sr_crc32(uint32_t crc, const uint8_t *buf, size_t len) {
#if defined(__x86_64__)
    if (have_pclmul < 0) { /* first call: at the module's load, before any thread of the engine */
        __builtin_cpu_init();
        have_pclmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
        make_tables();
    }
    if (have_pclmul > 0 && len >= 64) {
        size_t chunk = len & ~(size_t)15;
        crc = ~fold_crc(buf, chunk, ~crc);
        buf += chunk;
        len -= chunk;
    }
    if (len < 64 && small_ok) return len ? crc_small(crc, buf, len) : crc;
#endif
    while (len > 0x40000000u) { /* zlib takes an unsigned int */
        crc = crc32(crc, buf, 0x40000000u);
        buf += 0x40000000u;
        len -= 0x40000000u;
    }
    return len ? (uint32_t)crc32(crc, buf, (unsigned)len) : crc;
}

int sr_crc32_small(void) {
#if defined(__x86_64__)
    return small_ok;
#else
    return 0;
#endif
}

/* 1: the folded CRC equals zlib's on a spread of lengths and offsets; 0: it is switched off */
int sr_crc32_selftest(void) {
#if defined(__x86_64__)
    uint8_t data[1100];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 131 + 7 + (i >> 3));
    sr_crc32(0, data, 0); /* sets have_pclmul, makes the tables */
    for (size_t len = 0; len < 80; len++) /* the small pieces: every length below 64, and tails */
        for (size_t off = 0; off < 8; off++) {
            uint32_t seed = (uint32_t)(len * 0x9E3779B9u + off);
            if (crc_small(seed, data + off, len) != (uint32_t)crc32(seed, data + off, (unsigned)len)) {
                small_ok = 0;
                break;
            }
        }
    if (have_pclmul <= 0) return 1;
    static const size_t lens[] = {64, 65, 79, 80, 127, 128, 129, 1000, 1024, 1093};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++)
        for (size_t off = 0; off < 5; off++) {
            uint32_t seed = (uint32_t)(k * 0x9E3779B9u);
            uint32_t want = (uint32_t)crc32(seed, data + off, (unsigned)lens[k]);
            if (sr_crc32(seed, data + off, lens[k]) != want) {
                have_pclmul = 0;
                return 0;
            }
        }
#endif
    return 1;
}
