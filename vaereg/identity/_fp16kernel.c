/*
 * vaereg.identity._fp16kernel: the compiled loops over stored tensor values that vaereg runs at memory speed.
 *
 * 1. float32/bfloat16 -> fp16 rounding and health counts in one pass (round_f32, round_bf16, count_f16).
 *    The identity hashes every float tensor's values rounded to fp16 (nearest, ties to even;
 *    docs/identity-spec.md). numpy's cast does that one element at a time unless the CPU has AVX-512, and a numpy
 *    expression of it takes a dozen passes over memory; this loop is branch-free so compilers vectorise it, and it
 *    counts the non-finite and non-zero values on the way, so a tensor's bytes are touched once. Results are
 *    bit-identical to numpy's `values.astype(np.float16)` for every float32 bit pattern, NaN payloads included
 *    (tests/test_fp16.py, bench/fp16_exhaustive.py).
 *
 * 2. The differences of two stored copies of a tensor in one pass (diff_pair, for `vaereg diff`): ||a||^2 and
 *    ||b - a||^2 in double precision, the largest |b - a| (NaN-propagating) and answers/relation.py's precision rule
 *    (`values_agree`) for any pair of F32, F16 and BF16, with the GIL released. The verdicts are numpy's exactly, on
 *    every rounding boundary of every fp16 and bf16 value; the sums differ from numpy's only by the order of
 *    summation (tests/test_diff_kernel.py).
 *
 * Each has portable loops and, on x86 with GCC or Clang, AVX2 (+F16C) ones, chosen at import by what the CPU has
 * (`use_isa`/`isa` switch and tell; the tests run every set the CPU has). vaereg works without this module
 * (identity/fp16.py and answers/diff.py have the numpy versions); it only makes the passes faster.
 *
 * Little-endian hosts only: the module refuses to load elsewhere and vaereg uses numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__INTEL_COMPILER)
#define VAEREG_X86 1
#include <immintrin.h>
#define VAEREG_TARGET_F16C __attribute__((target("avx2,f16c")))
#else
#define VAEREG_X86 0
#endif

/* Counts are kept per block in 32-bit lanes (vectorisable) and summed into 64 bits between blocks. */
#define BLOCK 4096

typedef struct {
    uint64_t nonfinite; /* Inf and NaN values */
    uint32_t nonzero;   /* OR of every value's magnitude bits: zero iff every value is +0 or -0 */
} counts;

/* One float32 bit pattern to fp16 bits, nearest-even, NaN payload as numpy keeps it. */
static inline uint32_t
half_bits(uint32_t x)
{
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mag = x & 0x7fffffffu;

    /* fp16 normal range [2^-14, 2^16): rebias the exponent (127 -> 15), round away the 13 low bits to even.
       A carry out of the mantissa bumps the exponent, up to 0x7c00 (infinity) from 65520 on. */
    uint32_t normal = (mag - 0x38000000u + 0x0fffu + ((mag >> 13) & 1u)) >> 13;

    /* Below 2^-14 the result is a multiple of 2^-24: adding 0.5f (whose ulp is 2^-24) lets the FPU round to
       nearest even, and the low bits of the sum count the multiples. */
    float f;
    uint32_t sum;
    memcpy(&f, &mag, sizeof f);
    f += 0.5f;
    memcpy(&sum, &f, sizeof sum);
    uint32_t small = sum - 0x3f000000u;

    /* 2^16 and up: infinity; NaN keeps its top 10 payload bits and stays a NaN (numpy's rule). */
    uint32_t payload = (mag & 0x007fffffu) >> 13;
    uint32_t is_nan = 0u - (uint32_t)(mag > 0x7f800000u);
    uint32_t large = 0x7c00u | (is_nan & (payload | (uint32_t)(payload == 0)));

    uint32_t is_small = 0u - (uint32_t)(mag < 0x38800000u);
    uint32_t is_large = 0u - (uint32_t)(mag >= 0x47800000u);
    return sign | (is_small & small) | (~is_small & ~is_large & normal) | (is_large & large);
}

/* The portable loops: plain C that compilers vectorise for the baseline instruction set. */
#define ROUND_LOOP(NAME, LOAD, STRIDE)                                                                      \
    static void NAME(const unsigned char *src, uint16_t *dst, Py_ssize_t n, counts *c)                     \
    {                                                                                                       \
        for (Py_ssize_t start = 0; start < n; start += BLOCK) {                                             \
            Py_ssize_t stop = n - start < BLOCK ? n : start + BLOCK;                                        \
            uint32_t nonfinite = 0, nonzero = 0;                                                            \
            for (Py_ssize_t i = start; i < stop; i++) {                                                     \
                uint32_t x = LOAD(src + (size_t)i * STRIDE);                                                \
                uint32_t mag = x & 0x7fffffffu;                                                             \
                nonfinite += (uint32_t)(mag >= 0x7f800000u);                                                \
                nonzero |= mag;                                                                             \
                dst[i] = (uint16_t)half_bits(x);                                                            \
            }                                                                                               \
            c->nonfinite += nonfinite;                                                                      \
            c->nonzero |= nonzero;                                                                          \
        }                                                                                                   \
    }

#define COUNT_LOOP(NAME)                                                                                    \
    static void NAME(const unsigned char *src, Py_ssize_t n, counts *c)                                    \
    {                                                                                                       \
        for (Py_ssize_t start = 0; start < n; start += BLOCK) {                                             \
            Py_ssize_t stop = n - start < BLOCK ? n : start + BLOCK;                                        \
            uint32_t nonfinite = 0, nonzero = 0;                                                            \
            for (Py_ssize_t i = start; i < stop; i++) {                                                     \
                uint32_t mag = load_f16(src + (size_t)i * 2) & 0x7fffu;                                     \
                nonfinite += (uint32_t)(mag >= 0x7c00u);                                                    \
                nonzero |= mag;                                                                             \
            }                                                                                               \
            c->nonfinite += nonfinite;                                                                      \
            c->nonzero |= nonzero;                                                                          \
        }                                                                                                   \
    }

static inline uint32_t
load_f32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t
load_bf16(const unsigned char *p) /* bfloat16 is the top half of a float32 */
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return (uint32_t)v << 16;
}

static inline uint32_t
load_f16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

ROUND_LOOP(round_f32_base, load_f32, 4)
ROUND_LOOP(round_bf16_base, load_bf16, 2)
COUNT_LOOP(count_f16_base)

#if VAEREG_X86
/* x86 with F16C (every x86-64 CPU since 2013): the conversion instruction rounds to nearest even exactly as
   above; only a signalling NaN comes out differently (the instruction sets the quiet bit, numpy does not),
   so a group of eight holding a NaN is redone by `half_bits`. */
#define F16C_LOOP(NAME, LOAD8, STRIDE, SCALAR_LOAD)                                                         \
    VAEREG_TARGET_F16C static void NAME(const unsigned char *src, uint16_t *dst, Py_ssize_t n, counts *c)  \
    {                                                                                                       \
        const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);                                            \
        const __m256i finite_max = _mm256_set1_epi32(0x7f7fffff);                                           \
        const __m256i infinity = _mm256_set1_epi32(0x7f800000);                                             \
        for (Py_ssize_t start = 0; start < n; start += BLOCK) {                                             \
            Py_ssize_t stop = n - start < BLOCK ? n : start + BLOCK;                                        \
            __m256i nonfinite = _mm256_setzero_si256(), nonzero = _mm256_setzero_si256();                   \
            Py_ssize_t i = start;                                                                           \
            for (; i + 8 <= stop; i += 8) {                                                                 \
                __m256i bits = LOAD8(src + (size_t)i * STRIDE);                                             \
                __m256i mag = _mm256_and_si256(bits, magnitude);                                            \
                nonfinite = _mm256_sub_epi32(nonfinite, _mm256_cmpgt_epi32(mag, finite_max));               \
                nonzero = _mm256_or_si256(nonzero, mag);                                                    \
                __m128i halves = _mm256_cvtps_ph(_mm256_castsi256_ps(bits), _MM_FROUND_TO_NEAREST_INT);     \
                _mm_storeu_si128((__m128i *)(dst + i), halves);                                             \
                __m256i nan = _mm256_cmpgt_epi32(mag, infinity);                                            \
                if (!_mm256_testz_si256(nan, nan)) {                                                        \
                    for (int k = 0; k < 8; k++)                                                             \
                        dst[i + k] = (uint16_t)half_bits(SCALAR_LOAD(src + (size_t)(i + k) * STRIDE));      \
                }                                                                                           \
            }                                                                                               \
            uint32_t lanes[8], ors[8], tail_nonfinite = 0, tail_nonzero = 0;                                \
            for (; i < stop; i++) {                                                                         \
                uint32_t x = SCALAR_LOAD(src + (size_t)i * STRIDE);                                         \
                tail_nonfinite += (uint32_t)((x & 0x7fffffffu) >= 0x7f800000u);                             \
                tail_nonzero |= x & 0x7fffffffu;                                                            \
                dst[i] = (uint16_t)half_bits(x);                                                            \
            }                                                                                               \
            _mm256_storeu_si256((__m256i *)lanes, nonfinite);                                               \
            _mm256_storeu_si256((__m256i *)ors, nonzero);                                                   \
            for (int k = 0; k < 8; k++) {                                                                   \
                tail_nonfinite += lanes[k];                                                                 \
                tail_nonzero |= ors[k];                                                                     \
            }                                                                                               \
            c->nonfinite += tail_nonfinite;                                                                 \
            c->nonzero |= tail_nonzero;                                                                     \
        }                                                                                                   \
    }

VAEREG_TARGET_F16C static inline __m256i
load8_f32(const unsigned char *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

VAEREG_TARGET_F16C static inline __m256i
load8_bf16(const unsigned char *p)
{
    return _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
}

F16C_LOOP(round_f32_f16c, load8_f32, 4, load_f32)
F16C_LOOP(round_bf16_f16c, load8_bf16, 2, load_bf16)
__attribute__((target("avx2"))) COUNT_LOOP(count_f16_avx2)
#endif

/* --- diff_pair: how far two stored copies of a tensor are apart, in one pass (vaereg diff) ------------------------
 *
 * answers/diff.py measures each tensor pair piece by piece: ||a||^2 and ||b - a||^2 summed in double precision, the
 * largest |b - a| (NaN when any difference is NaN), and whether every pair of values obeys answers/relation.py's
 * precision rule (`values_agree`). F32, F16 and BF16 all widen exactly to float32, so a block of each side is widened
 * to float32 bit patterns first and the same loops serve every pair of those dtypes.
 *
 * The rule is decided on the bit patterns as integers: ordered keys (sign-magnitude turned into two's complement)
 * compare as the values do, +0 and -0 alike, and the rounding interval of an fp16 or bf16 value - the closed interval
 * between the midpoints to its neighbours - has exact float32 bounds. So "lo <= x <= hi" is an integer comparison,
 * exactly relation.py's float64 one, whatever the FPU's denormal flags.
 */

enum { DT_F32, DT_F16, DT_BF16 };
/* How the precision rule compares a pair: one dtype; float32 against the narrower fp16 or bf16 (which must be the
   float32 value rounded to nearest); fp16 against bf16 (neither holds the other: the rounding intervals must meet). */
enum { RULE_SAME, RULE_F32_F16, RULE_F32_BF16, RULE_F16_BF16 };

#define DIFF_BLOCK 1024 /* values widened per step: the two blocks stay in L1 */
#define LANES 8         /* independent partial sums: the loop vectorises without reordering any one of them */
#define INF_KEY 0x7f800000
#define F16_OVERFLOW 0x477ff000  /* 65520, the midpoint past fp16's largest value: from here up, fp16 infinity */
#define BF16_OVERFLOW 0x7f7f8000 /* the same for bfloat16 */

typedef struct {
    double norm2[LANES], gap2[LANES];
    int64_t largest[LANES]; /* bit patterns of the largest |b - a| */
} diff_sums;

static inline float
as_float(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The bit pattern of |d|: for non-negative doubles, integers order as the values do. */
static inline int64_t
magnitude_bits(double d)
{
    int64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits & INT64_MAX;
}

static inline uint32_t
as_bits(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

/* fp16 bits to float32 bits, exactly; a NaN keeps its payload (as numpy widens it). */
static inline uint32_t
single_bits(uint32_t h)
{
    uint32_t sign = (h & 0x8000u) << 16;
    uint32_t mag = h & 0x7fffu;
    uint32_t normal = (mag << 13) + 0x38000000u;   /* exponent bias 15 -> 127 */
    uint32_t special = (mag << 13) | 0x7f800000u;  /* infinity, NaN */
    uint32_t small = as_bits((float)(int32_t)mag * 5.9604644775390625e-08f); /* zero, subnormals: mag * 2^-24 */
    uint32_t is_small = 0u - (uint32_t)(mag < 0x0400u);
    uint32_t is_special = 0u - (uint32_t)(mag >= 0x7c00u);
    return sign | (is_small & small) | (is_special & special) | (~is_small & ~is_special & normal);
}

/* An ordered key of a float32 bit pattern: keys compare as the values do, +0 and -0 alike (NaNs lie beyond the
   infinities). */
static inline int32_t
order_key(uint32_t bits)
{
    int32_t mag = (int32_t)(bits & 0x7fffffffu);
    int32_t neg = -(int32_t)(bits >> 31);
    return (mag ^ neg) - neg;
}

static inline uint32_t
is_nan_bits(uint32_t bits)
{
    return (uint32_t)((bits & 0x7fffffffu) > 0x7f800000u);
}

/* The closed interval of reals that round to an fp16 value (given as float32 bits), as keys: the midpoints to its
   neighbours (relation.rounding_interval). An infinity's interval is itself or, with `overflow` (float32 against
   fp16), every value that rounds to it. */
static inline void
f16_interval(uint32_t bits, int overflow, int32_t *lo, int32_t *hi)
{
    uint32_t mag = bits & 0x7fffffffu;
    /* Up to 2^-14 fp16 values are 2^-24 apart: the value -+ 2^-25, exact in float32 and never subnormal. */
    int32_t small_lo = order_key(as_bits(as_float(mag) - 2.98023223876953125e-08f));
    int32_t small_hi = order_key(as_bits(as_float(mag) + 2.98023223876953125e-08f));
    /* Above, each binade's fp16 values are float32 patterns 2^13 apart: the midpoints are 2^12 either side (the one
       below a power of two falls in the binade below, whose step is half: still its midpoint). */
    int32_t big_lo = (int32_t)mag - 0x1000, big_hi = (int32_t)mag + 0x1000;
    int small = mag <= 0x38800000u, inf = mag == 0x7f800000u;
    int32_t mlo = small ? small_lo : big_lo, mhi = small ? small_hi : big_hi;
    mlo = inf ? (overflow ? F16_OVERFLOW : INF_KEY) : mlo;
    mhi = inf ? INF_KEY : mhi;
    int neg = (int)(bits >> 31);
    *lo = neg ? -mhi : mlo;
    *hi = neg ? -mlo : mhi;
}

/* The same for a bfloat16 value: float32 patterns 2^16 apart, so the midpoints are 2^15 either side, through zero
   too (key -2^15 is -2^-134). */
static inline void
bf16_interval(uint32_t bits, int overflow, int32_t *lo, int32_t *hi)
{
    uint32_t mag = bits & 0x7fffffffu;
    int inf = mag == 0x7f800000u;
    int32_t mlo = inf ? (overflow ? BF16_OVERFLOW : INF_KEY) : (int32_t)mag - 0x8000;
    int32_t mhi = inf ? INF_KEY : (int32_t)mag + 0x8000;
    int neg = (int)(bits >> 31);
    *lo = neg ? -mhi : mlo;
    *hi = neg ? -mlo : mhi;
}

/* The portable loops: plain C, over blocks of float32 bit patterns. */

static void
widen_f32(const unsigned char *src, uint32_t *dst, Py_ssize_t n)
{
    memcpy(dst, src, (size_t)n * 4);
}

static void
widen_f16_base(const unsigned char *src, uint32_t *dst, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        dst[i] = single_bits(load_f16(src + (size_t)i * 2));
}

static void
widen_bf16_base(const unsigned char *src, uint32_t *dst, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        dst[i] = load_bf16(src + (size_t)i * 2);
}

/* Sums of squares and the largest difference, value i + k in lane k of LANES. The largest |b - a| is kept as its
   bit pattern, an integer that orders as the value does (|b - a| is never negative) and that compilers vectorise,
   where a double maximum they do not. NaN needs no flag: a NaN difference makes the sum of squares NaN, which
   py_diff_pair turns into a NaN maximum. */
static inline void
sum_value(double *norm2, double *gap2, int64_t *largest, uint32_t a, uint32_t b)
{
    double x = as_float(a), y = as_float(b), d = y - x;
    int64_t m = magnitude_bits(d);
    *norm2 += x * x;
    *gap2 += d * d;
    *largest = m > *largest ? m : *largest;
}

static void
sums_base(const uint32_t *a, const uint32_t *b, Py_ssize_t n, diff_sums *s)
{
    double norm2[LANES], gap2[LANES];
    int64_t largest[LANES];
    memcpy(norm2, s->norm2, sizeof norm2);
    memcpy(gap2, s->gap2, sizeof gap2);
    memcpy(largest, s->largest, sizeof largest);
    Py_ssize_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++)
            sum_value(&norm2[k], &gap2[k], &largest[k], a[i + k], b[i + k]);
    for (int k = 0; i < n; i++, k++)
        sum_value(&norm2[k], &gap2[k], &largest[k], a[i], b[i]);
    memcpy(s->norm2, norm2, sizeof norm2);
    memcpy(s->gap2, gap2, sizeof gap2);
    memcpy(s->largest, largest, sizeof largest);
}

static void
squares_base(const uint32_t *a, Py_ssize_t n, diff_sums *s)
{
    double norm2[LANES];
    memcpy(norm2, s->norm2, sizeof norm2);
    Py_ssize_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++)
            norm2[k] += (double)as_float(a[i + k]) * as_float(a[i + k]);
    for (int k = 0; i < n; i++, k++)
        norm2[k] += (double)as_float(a[i]) * as_float(a[i]);
    memcpy(s->norm2, norm2, sizeof norm2);
}

/* The precision rule over a block: 1 when every pair agrees. NaN agrees with NaN only. */
static int
agree_same_base(const uint32_t *x, const uint32_t *y, Py_ssize_t n)
{
    uint32_t bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t nan = is_nan_bits(x[i]) & is_nan_bits(y[i]);
        bad |= (nan | (uint32_t)(order_key(x[i]) == order_key(y[i]))) ^ 1u;
    }
    return !bad;
}

/* float32 `x` against the narrower `y`: x lies in the rounding interval of y (values past the overflow midpoint in
   an infinity's). */
#define AGREE_NARROW(NAME, INTERVAL)                                                                        \
    static int NAME(const uint32_t *x, const uint32_t *y, Py_ssize_t n)                                    \
    {                                                                                                       \
        uint32_t bad = 0;                                                                                   \
        for (Py_ssize_t i = 0; i < n; i++) {                                                                \
            int32_t lo, hi, k = order_key(x[i]);                                                            \
            INTERVAL(y[i], 1, &lo, &hi);                                                                    \
            uint32_t nx = is_nan_bits(x[i]), ny = is_nan_bits(y[i]);                                        \
            uint32_t ok = (nx | ny) ? (nx & ny) : ((uint32_t)(lo <= k) & (uint32_t)(k <= hi));              \
            bad |= ok ^ 1u;                                                                                 \
        }                                                                                                   \
        return !bad;                                                                                        \
    }

AGREE_NARROW(agree_f32_f16_base, f16_interval)
AGREE_NARROW(agree_f32_bf16_base, bf16_interval)

/* fp16 `x` against bfloat16 `y`: their rounding intervals meet (infinities: only the same one). */
static int
agree_f16_bf16_base(const uint32_t *x, const uint32_t *y, Py_ssize_t n)
{
    uint32_t bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t xlo, xhi, ylo, yhi;
        f16_interval(x[i], 0, &xlo, &xhi);
        bf16_interval(y[i], 0, &ylo, &yhi);
        int32_t lo = xlo > ylo ? xlo : ylo, hi = xhi < yhi ? xhi : yhi;
        uint32_t nx = is_nan_bits(x[i]), ny = is_nan_bits(y[i]);
        uint32_t ok = (nx | ny) ? (nx & ny) : (uint32_t)(lo <= hi);
        bad |= ok ^ 1u;
    }
    return !bad;
}

#if VAEREG_X86
/* The AVX2 loops, compiled for AVX2 and F16C like the rounding loops (the "avx2+f16c" set): eight values a step,
   the same arithmetic as the portable loops (no fused multiply-add) and the same lanes - double lane k of eight sums
   the values at i + k - so both give the same sums, bit for bit. The few values past the last group of eight go
   through the portable loops. */

/* F16C widens eight fp16 values in one instruction, exactly (NaNs stay NaNs). */
VAEREG_TARGET_F16C static void
widen_f16_f16c(const unsigned char *src, uint32_t *dst, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wide = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + (size_t)i * 2)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_castps_si256(wide));
    }
    widen_f16_base(src + (size_t)i * 2, dst + i, n - i);
}

VAEREG_TARGET_F16C static void
widen_bf16_avx2(const unsigned char *src, uint32_t *dst, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_si256((__m256i *)(dst + i), load8_bf16(src + (size_t)i * 2));
    widen_bf16_base(src + (size_t)i * 2, dst + i, n - i);
}

VAEREG_TARGET_F16C static void
sums_avx2(const uint32_t *a, const uint32_t *b, Py_ssize_t n, diff_sums *s)
{
    const __m256d magnitude = _mm256_castsi256_pd(_mm256_set1_epi64x(INT64_MAX));
    __m256d norm_lo = _mm256_loadu_pd(s->norm2), norm_hi = _mm256_loadu_pd(s->norm2 + 4);
    __m256d gap_lo = _mm256_loadu_pd(s->gap2), gap_hi = _mm256_loadu_pd(s->gap2 + 4);
    __m256d big_lo = _mm256_castsi256_pd(_mm256_loadu_si256((const __m256i *)s->largest));
    __m256d big_hi = _mm256_castsi256_pd(_mm256_loadu_si256((const __m256i *)(s->largest + 4)));
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 fa = _mm256_loadu_ps((const float *)(a + i)), fb = _mm256_loadu_ps((const float *)(b + i));
        __m256d xl = _mm256_cvtps_pd(_mm256_castps256_ps128(fa)), xh = _mm256_cvtps_pd(_mm256_extractf128_ps(fa, 1));
        __m256d yl = _mm256_cvtps_pd(_mm256_castps256_ps128(fb)), yh = _mm256_cvtps_pd(_mm256_extractf128_ps(fb, 1));
        __m256d dl = _mm256_sub_pd(yl, xl), dh = _mm256_sub_pd(yh, xh);
        norm_lo = _mm256_add_pd(norm_lo, _mm256_mul_pd(xl, xl));
        norm_hi = _mm256_add_pd(norm_hi, _mm256_mul_pd(xh, xh));
        gap_lo = _mm256_add_pd(gap_lo, _mm256_mul_pd(dl, dl));
        gap_hi = _mm256_add_pd(gap_hi, _mm256_mul_pd(dh, dh));
        /* never NaN where it matters (a NaN makes gap2 NaN), so the instruction's NaN rule is irrelevant */
        big_lo = _mm256_max_pd(_mm256_and_pd(dl, magnitude), big_lo);
        big_hi = _mm256_max_pd(_mm256_and_pd(dh, magnitude), big_hi);
    }
    _mm256_storeu_pd(s->norm2, norm_lo);
    _mm256_storeu_pd(s->norm2 + 4, norm_hi);
    _mm256_storeu_pd(s->gap2, gap_lo);
    _mm256_storeu_pd(s->gap2 + 4, gap_hi);
    _mm256_storeu_si256((__m256i *)s->largest, _mm256_castpd_si256(big_lo));
    _mm256_storeu_si256((__m256i *)(s->largest + 4), _mm256_castpd_si256(big_hi));
    sums_base(a + i, b + i, n - i, s);
}

VAEREG_TARGET_F16C static void
squares_avx2(const uint32_t *a, Py_ssize_t n, diff_sums *s)
{
    __m256d norm_lo = _mm256_loadu_pd(s->norm2), norm_hi = _mm256_loadu_pd(s->norm2 + 4);
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 fa = _mm256_loadu_ps((const float *)(a + i));
        __m256d xl = _mm256_cvtps_pd(_mm256_castps256_ps128(fa)), xh = _mm256_cvtps_pd(_mm256_extractf128_ps(fa, 1));
        norm_lo = _mm256_add_pd(norm_lo, _mm256_mul_pd(xl, xl));
        norm_hi = _mm256_add_pd(norm_hi, _mm256_mul_pd(xh, xh));
    }
    _mm256_storeu_pd(s->norm2, norm_lo);
    _mm256_storeu_pd(s->norm2 + 4, norm_hi);
    squares_base(a + i, n - i, s);
}

VAEREG_TARGET_F16C static inline __m256i
order_key8(__m256i bits)
{
    __m256i neg = _mm256_srai_epi32(bits, 31);
    return _mm256_sub_epi32(_mm256_xor_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff)), neg), neg);
}

VAEREG_TARGET_F16C static inline __m256i
is_nan8(__m256i bits)
{
    return _mm256_cmpgt_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(INF_KEY));
}

/* [lo, hi] from the magnitude's bounds, mirrored for negative values; an infinity's as in f16_interval. */
VAEREG_TARGET_F16C static inline void
signed_interval8(__m256i bits, __m256i mag, __m256i mlo, __m256i mhi, int32_t inf_lo, __m256i *lo, __m256i *hi)
{
    __m256i inf = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(INF_KEY));
    mlo = _mm256_blendv_epi8(mlo, _mm256_set1_epi32(inf_lo), inf);
    mhi = _mm256_blendv_epi8(mhi, _mm256_set1_epi32(INF_KEY), inf);
    __m256i neg = _mm256_srai_epi32(bits, 31), zero = _mm256_setzero_si256();
    *lo = _mm256_blendv_epi8(mlo, _mm256_sub_epi32(zero, mhi), neg);
    *hi = _mm256_blendv_epi8(mhi, _mm256_sub_epi32(zero, mlo), neg);
}

VAEREG_TARGET_F16C static inline void
f16_interval8(__m256i bits, int overflow, __m256i *lo, __m256i *hi)
{
    __m256i mag = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
    __m256 value = _mm256_castsi256_ps(mag), step = _mm256_set1_ps(2.98023223876953125e-08f);
    __m256i small_lo = order_key8(_mm256_castps_si256(_mm256_sub_ps(value, step)));
    __m256i small_hi = _mm256_castps_si256(_mm256_add_ps(value, step)); /* positive: its bits are its key */
    __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x38800001), mag);
    __m256i mlo = _mm256_blendv_epi8(_mm256_sub_epi32(mag, _mm256_set1_epi32(0x1000)), small_lo, small);
    __m256i mhi = _mm256_blendv_epi8(_mm256_add_epi32(mag, _mm256_set1_epi32(0x1000)), small_hi, small);
    signed_interval8(bits, mag, mlo, mhi, overflow ? F16_OVERFLOW : INF_KEY, lo, hi);
}

VAEREG_TARGET_F16C static inline void
bf16_interval8(__m256i bits, int overflow, __m256i *lo, __m256i *hi)
{
    __m256i mag = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff)), half = _mm256_set1_epi32(0x8000);
    signed_interval8(bits, mag, _mm256_sub_epi32(mag, half), _mm256_add_epi32(mag, half),
                     overflow ? BF16_OVERFLOW : INF_KEY, lo, hi);
}

/* A group's disagreements: where exactly one is NaN, or neither is and `outside`. */
VAEREG_TARGET_F16C static inline __m256i
disagree8(__m256i x, __m256i y, __m256i outside)
{
    __m256i nx = is_nan8(x), ny = is_nan8(y);
    return _mm256_blendv_epi8(outside, _mm256_xor_si256(nx, ny), _mm256_or_si256(nx, ny));
}

VAEREG_TARGET_F16C static int
agree_same_avx2(const uint32_t *x, const uint32_t *y, Py_ssize_t n)
{
    __m256i bad = _mm256_setzero_si256(), ones = _mm256_set1_epi32(-1);
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(x + i)), b = _mm256_loadu_si256((const __m256i *)(y + i));
        __m256i differ = _mm256_xor_si256(_mm256_cmpeq_epi32(order_key8(a), order_key8(b)), ones);
        bad = _mm256_or_si256(bad, disagree8(a, b, differ));
    }
    return _mm256_testz_si256(bad, bad) && agree_same_base(x + i, y + i, n - i);
}

#define AGREE_NARROW8(NAME, INTERVAL8, BASE)                                                                \
    VAEREG_TARGET_F16C static int NAME(const uint32_t *x, const uint32_t *y, Py_ssize_t n)                \
    {                                                                                                       \
        __m256i bad = _mm256_setzero_si256();                                                               \
        Py_ssize_t i = 0;                                                                                   \
        for (; i + 8 <= n; i += 8) {                                                                        \
            __m256i a = _mm256_loadu_si256((const __m256i *)(x + i));                                       \
            __m256i b = _mm256_loadu_si256((const __m256i *)(y + i));                                       \
            __m256i lo, hi, k = order_key8(a);                                                              \
            INTERVAL8(b, 1, &lo, &hi);                                                                      \
            __m256i outside = _mm256_or_si256(_mm256_cmpgt_epi32(lo, k), _mm256_cmpgt_epi32(k, hi));        \
            bad = _mm256_or_si256(bad, disagree8(a, b, outside));                                           \
        }                                                                                                   \
        return _mm256_testz_si256(bad, bad) && BASE(x + i, y + i, n - i);                                   \
    }

AGREE_NARROW8(agree_f32_f16_avx2, f16_interval8, agree_f32_f16_base)
AGREE_NARROW8(agree_f32_bf16_avx2, bf16_interval8, agree_f32_bf16_base)

VAEREG_TARGET_F16C static int
agree_f16_bf16_avx2(const uint32_t *x, const uint32_t *y, Py_ssize_t n)
{
    __m256i bad = _mm256_setzero_si256();
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(x + i)), b = _mm256_loadu_si256((const __m256i *)(y + i));
        __m256i xlo, xhi, ylo, yhi;
        f16_interval8(a, 0, &xlo, &xhi);
        bf16_interval8(b, 0, &ylo, &yhi);
        __m256i apart = _mm256_cmpgt_epi32(_mm256_max_epi32(xlo, ylo), _mm256_min_epi32(xhi, yhi));
        bad = _mm256_or_si256(bad, disagree8(a, b, apart));
    }
    return _mm256_testz_si256(bad, bad) && agree_f16_bf16_base(x + i, y + i, n - i);
}
#endif

typedef void (*widen_fn)(const unsigned char *, uint32_t *, Py_ssize_t);
typedef struct {
    widen_fn widen[3]; /* by DT_* */
    void (*sums)(const uint32_t *, const uint32_t *, Py_ssize_t, diff_sums *);
    void (*squares)(const uint32_t *, Py_ssize_t, diff_sums *);
    int (*agree[4])(const uint32_t *, const uint32_t *, Py_ssize_t); /* by RULE_*: (wider or fp16, other) */
} diff_loops;

static const diff_loops diff_base = {
    {widen_f32, widen_f16_base, widen_bf16_base},
    sums_base,
    squares_base,
    {agree_same_base, agree_f32_f16_base, agree_f32_bf16_base, agree_f16_bf16_base},
};
#if VAEREG_X86
static const diff_loops diff_avx2 = {
    {widen_f32, widen_f16_f16c, widen_bf16_avx2},
    sums_avx2,
    squares_avx2,
    {agree_same_avx2, agree_f32_f16_avx2, agree_f32_bf16_avx2, agree_f16_bf16_avx2},
};
#endif
static const diff_loops *diff_loops_in_use = &diff_base;

typedef void (*round_fn)(const unsigned char *, uint16_t *, Py_ssize_t, counts *);
typedef void (*count_fn)(const unsigned char *, Py_ssize_t, counts *);

static round_fn round_f32 = round_f32_base;
static round_fn round_bf16 = round_bf16_base;
static count_fn count_f16 = count_f16_base;
static const char *isa = "baseline";

static PyObject *
counts_tuple(const counts *c)
{
    return Py_BuildValue("(KO)", (unsigned long long)c->nonfinite, c->nonzero ? Py_True : Py_False);
}

static PyObject *
round_into(PyObject *args, const char *fname, Py_ssize_t itemsize, round_fn fn)
{
    Py_buffer src, dst;
    char format[8];
    PyOS_snprintf(format, sizeof format, "y*w*:%s", fname);
    if (!PyArg_ParseTuple(args, format, &src, &dst))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = src.len / itemsize;
    if (src.len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: source of %zd bytes is not a whole number of %zd-byte values", fname,
                     src.len, itemsize);
    } else if (dst.len < n * 2) {
        PyErr_Format(PyExc_ValueError, "%s: output of %zd bytes is smaller than %zd fp16 values", fname, dst.len, n);
    } else {
        counts c = {0, 0};
        Py_BEGIN_ALLOW_THREADS
        fn((const unsigned char *)src.buf, (uint16_t *)dst.buf, n, &c);
        Py_END_ALLOW_THREADS
        result = counts_tuple(&c);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

PyDoc_STRVAR(round_f32_doc,
             "round_f32(src, dst) -> (nonfinite, nonzero)\n\n"
             "Round the little-endian float32 values in `src` to fp16 bits in `dst` (at least half its size).\n"
             "Returns how many values are Inf or NaN and whether any is not +-0.");

static PyObject *
py_round_f32(PyObject *self, PyObject *args)
{
    return round_into(args, "round_f32", 4, round_f32);
}

PyDoc_STRVAR(round_bf16_doc,
             "round_bf16(src, dst) -> (nonfinite, nonzero)\n\n"
             "Round the little-endian bfloat16 values in `src` to fp16 bits in `dst` (at least its size).\n"
             "Returns how many values are Inf or NaN and whether any is not +-0.");

static PyObject *
py_round_bf16(PyObject *self, PyObject *args)
{
    return round_into(args, "round_bf16", 2, round_bf16);
}

PyDoc_STRVAR(count_f16_doc,
             "count_f16(src) -> (nonfinite, nonzero)\n\n"
             "How many of the little-endian fp16 values in `src` are Inf or NaN, and whether any is not +-0.");

static PyObject *
py_count_f16(PyObject *self, PyObject *args)
{
    Py_buffer src;
    if (!PyArg_ParseTuple(args, "y*:count_f16", &src))
        return NULL;
    PyObject *result = NULL;
    if (src.len % 2 != 0) {
        PyErr_Format(PyExc_ValueError, "count_f16: source of %zd bytes is not a whole number of fp16 values", src.len);
    } else {
        counts c = {0, 0};
        Py_BEGIN_ALLOW_THREADS
        count_f16((const unsigned char *)src.buf, src.len / 2, &c);
        Py_END_ALLOW_THREADS
        result = counts_tuple(&c);
    }
    PyBuffer_Release(&src);
    return result;
}

static const Py_ssize_t dtype_width[3] = {4, 2, 2};

static int
dtype_code(const char *name)
{
    if (strcmp(name, "F32") == 0)
        return DT_F32;
    if (strcmp(name, "F16") == 0)
        return DT_F16;
    if (strcmp(name, "BF16") == 0)
        return DT_BF16;
    return -1;
}

/* One pass over n values of each side (b may be NULL: only ||a||^2). Returns whether every pair agrees (1 when
   `check` is 0). */
static int
diff_run(const diff_loops *L, const unsigned char *a, int da, const unsigned char *b, int db, Py_ssize_t n,
         int check, diff_sums *s)
{
    uint32_t wa[DIFF_BLOCK], wb[DIFF_BLOCK];
    int rule = RULE_SAME, swap = 0, agrees = 1;
    if (b != NULL && da != db) {
        int narrow = da == DT_F32 ? db : da;
        rule = (da == DT_F32 || db == DT_F32) ? (narrow == DT_F16 ? RULE_F32_F16 : RULE_F32_BF16) : RULE_F16_BF16;
        swap = rule == RULE_F16_BF16 ? da == DT_BF16 : db == DT_F32; /* the agree loops take (wider or fp16, other) */
    }
    for (Py_ssize_t start = 0; start < n; start += DIFF_BLOCK) {
        Py_ssize_t m = n - start < DIFF_BLOCK ? n - start : DIFF_BLOCK;
        L->widen[da](a + (size_t)start * dtype_width[da], wa, m);
        if (b == NULL) {
            L->squares(wa, m, s);
            continue;
        }
        L->widen[db](b + (size_t)start * dtype_width[db], wb, m);
        L->sums(wa, wb, m, s);
        if (check && agrees)
            agrees = swap ? L->agree[rule](wb, wa, m) : L->agree[rule](wa, wb, m);
    }
    return agrees;
}

PyDoc_STRVAR(diff_pair_doc,
             "diff_pair(a, a_dtype, b, b_dtype, check) -> (norm2, gap2, max_abs, agrees)\n\n"
             "One piece of a tensor pair: little-endian values of dtype 'F32', 'F16' or 'BF16' in `a` and `b`\n"
             "(the same count; `b` may be None, then only norm2 is summed). norm2 = sum a^2 and gap2 = sum (b - a)^2\n"
             "in double precision, max_abs the largest |b - a| (NaN when any difference is NaN), agrees whether\n"
             "every pair obeys answers.relation.values_agree (computed only when `check`, else True).");

static PyObject *
py_diff_pair(PyObject *self, PyObject *args)
{
    Py_buffer a, b;
    PyObject *b_obj;
    const char *a_name, *b_name;
    int check;
    if (!PyArg_ParseTuple(args, "y*sOzp:diff_pair", &a, &a_name, &b_obj, &b_name, &check))
        return NULL;
    memset(&b, 0, sizeof b);
    if (b_obj != Py_None && PyObject_GetBuffer(b_obj, &b, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    PyObject *result = NULL;
    int da = dtype_code(a_name), db = b.buf != NULL ? (b_name != NULL ? dtype_code(b_name) : -1) : DT_F32;
    if (da < 0 || db < 0) {
        PyErr_Format(PyExc_ValueError, "diff_pair: dtypes %s and %s: only F32, F16 and BF16", a_name,
                     b_name != NULL ? b_name : "None");
    } else if (a.len % dtype_width[da] != 0 || (b.buf != NULL && b.len % dtype_width[db] != 0)) {
        PyErr_SetString(PyExc_ValueError, "diff_pair: a buffer is not a whole number of values");
    } else if (b.buf != NULL && a.len / dtype_width[da] != b.len / dtype_width[db]) {
        PyErr_Format(PyExc_ValueError, "diff_pair: %zd values against %zd", a.len / dtype_width[da],
                     b.len / dtype_width[db]);
    } else {
        diff_sums s;
        memset(&s, 0, sizeof s);
        int agrees;
        const diff_loops *loops = diff_loops_in_use;
        Py_BEGIN_ALLOW_THREADS
        agrees = diff_run(loops, (const unsigned char *)a.buf, da, (const unsigned char *)b.buf, db,
                          a.len / dtype_width[da], check, &s);
        Py_END_ALLOW_THREADS
        double norm2 = 0, gap2 = 0, max_abs;
        int64_t largest = 0;
        for (int k = 0; k < LANES; k++) {
            norm2 += s.norm2[k];
            gap2 += s.gap2[k];
            largest = s.largest[k] > largest ? s.largest[k] : largest;
        }
        memcpy(&max_abs, &largest, sizeof max_abs);
        if (gap2 != gap2) /* a NaN difference */
            max_abs = Py_NAN;
        result = Py_BuildValue("(dddO)", norm2, gap2, max_abs, agrees ? Py_True : Py_False);
    }
    PyBuffer_Release(&a);
    if (b.buf != NULL)
        PyBuffer_Release(&b);
    return result;
}

static int
use_isa(const char *name)
{
    if (strcmp(name, "baseline") == 0) {
        round_f32 = round_f32_base;
        round_bf16 = round_bf16_base;
        count_f16 = count_f16_base;
        diff_loops_in_use = &diff_base;
        isa = "baseline";
        return 1;
    }
#if VAEREG_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx2+f16c") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
        round_f32 = round_f32_f16c;
        round_bf16 = round_bf16_f16c;
        count_f16 = count_f16_avx2;
        diff_loops_in_use = &diff_avx2;
        isa = "avx2+f16c";
        return 1;
    }
#endif
    return 0;
}

PyDoc_STRVAR(use_isa_doc,
             "use_isa(name) -> bool\n\n"
             "Switch to the loops for `name` ('baseline', or 'avx2+f16c' where the CPU has it); False if this\n"
             "CPU or build has no such loops. The best one is chosen at import; the tests check each.");

static PyObject *
py_use_isa(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s:use_isa", &name))
        return NULL;
    return PyBool_FromLong(use_isa(name));
}

static PyObject *
py_isa(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(isa);
}

static PyMethodDef methods[] = {
    {"use_isa", py_use_isa, METH_VARARGS, use_isa_doc},
    {"isa", py_isa, METH_NOARGS, "isa() -> str\n\nThe instruction set the loops in use were built for."},
    {"round_f32", py_round_f32, METH_VARARGS, round_f32_doc},
    {"round_bf16", py_round_bf16, METH_VARARGS, round_bf16_doc},
    {"count_f16", py_count_f16, METH_VARARGS, count_f16_doc},
    {"diff_pair", py_diff_pair, METH_VARARGS, diff_pair_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vaereg.identity._fp16kernel",
    "float32/bfloat16 -> fp16 rounding (nearest even, numpy's NaN rule) with non-finite and non-zero counts, and\n"
    "the differences and precision-rule agreement of two stored copies of a tensor (vaereg diff).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__fp16kernel(void)
{
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe != 1) {
        PyErr_SetString(PyExc_ImportError, "vaereg's fp16 kernel supports little-endian hosts only");
        return NULL;
    }
    use_isa("avx2+f16c"); /* else the baseline loops, set statically */
    return PyModule_Create(&module);
}
