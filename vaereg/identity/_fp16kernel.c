/*
 * vaereg.identity._fp16kernel: float32/bfloat16 -> fp16 rounding and health counts in one pass.
 *
 * The identity hashes every float tensor's values rounded to fp16 (nearest, ties to even; docs/identity-spec.md).
 * numpy's cast does that one element at a time unless the CPU has AVX-512, and a numpy expression of it takes a
 * dozen passes over memory; this loop is branch-free so compilers vectorise it, and it counts the non-finite
 * and non-zero values on the way, so a tensor's bytes are touched once.
 *
 * Results are bit-identical to numpy's `values.astype(np.float16)` for every float32 bit pattern, NaN payloads
 * included (tests/test_fp16.py, bench/fp16_exhaustive.py). vaereg works without this module (identity/fp16.py
 * has the numpy version); it only makes the pass faster.
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

static int
use_isa(const char *name)
{
    if (strcmp(name, "baseline") == 0) {
        round_f32 = round_f32_base;
        round_bf16 = round_bf16_base;
        count_f16 = count_f16_base;
        isa = "baseline";
        return 1;
    }
#if VAEREG_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx2+f16c") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
        round_f32 = round_f32_f16c;
        round_bf16 = round_bf16_f16c;
        count_f16 = count_f16_avx2;
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vaereg.identity._fp16kernel",
    "float32/bfloat16 -> fp16 rounding (nearest even, numpy's NaN rule) with non-finite and non-zero counts.",
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
