/*
 * Replays recorded kernel calls (tests/aarch64/make_vectors.py) against the C kernels built for
 * this machine, at every SIMD level the CPU has (or those named), and checks each result:
 *   - decompression: the output bytes equal the numpy reference's, bit for bit, and every byte
 *     of the output was written (the buffer starts filled with a sentinel);
 *   - exact products: |y - y_exact| <= bound per output (ops.py's float32 summation bound);
 *   - fast mode: ||y - y_exact|| < rtol ||y_exact||, and close to the x86 kernel's result;
 *   - the status code (bad sizes must be refused, and then nothing is written).
 * Every input buffer ends at a page boundary followed by an inaccessible page, so reading one
 * byte past it stops the run.
 *
 *   driver VECTORS [--levels scalar,neon,...] [--threads N] [--expect-level NAME] [--corrupt]
 *
 * Exit status 0 when every check passed.  --corrupt makes every expectation wrong (one bit of a
 * decoded value, an output moved past its bound, a refusal expected to succeed) and exits 0 only
 * if every record then fails: the checks are live.
 */
#define _DEFAULT_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "weightpack.h"

enum kind { LUT_DECODE, SPARSE_DECODE, SHIFT_SCALE_DECODE, LUT_MATVEC, QUANT_MATVEC, SPARSE_MATVEC, FAST_MATVEC, KINDS };
static const char *const KIND_NAMES[KINDS] = {"lut_decode", "sparse_decode", "shift_scale_decode", "lut_matvec",
                                              "quant_matvec", "sparse_matvec", "fast_matvec"};
/* Argument count and position of the output buffer of each kernel (weightpack.h). */
static const int ARG_COUNT[KINDS] = {21, 9, 17, 19, 20, 13, 17};
static const int OUT_ARG[KINDS] = {19, 7, 14, 17, 18, 11, 15};

#define STATUS_NOT_AVAILABLE (-6)
#define STATUS_ARG (-5)
#define SENTINEL 0xa5
#define MAX_ARGS 24
#define MAX_BLOBS 4

typedef struct {
    int is_buffer, is_null;
    long long value;
    size_t len;
    uint8_t *data; /* the recorded bytes */
    void *guarded; /* the copy the kernel sees, ending at a guard page */
    void *map;
    size_t map_len;
} arg;

typedef struct {
    int kind, x86_status, expect_status;
    char label[96];
    int nargs, nblobs;
    arg args[MAX_ARGS];
    size_t blob_len[MAX_BLOBS];
    uint8_t *blob[MAX_BLOBS];
} record;

static void die(const char *what)
{
    fprintf(stderr, "driver: %s\n", what);
    exit(2);
}

static void read_exact(FILE *f, void *p, size_t n)
{
    if (n && fread(p, 1, n, f) != n) die("truncated vector file");
}

static uint64_t read_u64(FILE *f)
{
    uint64_t v;
    read_exact(f, &v, 8);
    return v;
}

static int32_t read_i32(FILE *f)
{
    int32_t v;
    read_exact(f, &v, 4);
    return v;
}

static uint8_t *read_blob(FILE *f, size_t *len)
{
    *len = (size_t)read_u64(f);
    uint8_t *p = malloc(*len ? *len : 1);
    if (!p) die("out of memory");
    read_exact(f, p, *len);
    return p;
}

/* A copy of the bytes that ends exactly where an inaccessible page begins. */
static void guard(arg *a)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t pages = (a->len + page - 1) / page + 1;
    a->map_len = pages * page;
    a->map = mmap(NULL, a->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a->map == MAP_FAILED) die("mmap failed");
    if (mprotect((uint8_t *)a->map + (pages - 1) * page, page, PROT_NONE)) die("mprotect failed");
    a->guarded = (uint8_t *)a->map + (pages - 1) * page - a->len;
    memcpy(a->guarded, a->data, a->len);
}

static int read_record(FILE *f, record *r)
{
    int32_t kind;
    if (fread(&kind, 1, 4, f) != 4) return 0;
    r->kind = kind;
    if (kind < 0 || kind >= KINDS) die("unknown record kind");
    r->x86_status = read_i32(f);
    r->expect_status = read_i32(f);
    const uint64_t label_len = read_u64(f);
    if (label_len >= sizeof r->label) die("label too long");
    read_exact(f, r->label, label_len);
    r->label[label_len] = 0;
    r->nargs = read_i32(f);
    if (r->nargs != ARG_COUNT[kind]) die("argument count does not match the kernel");
    for (int i = 0; i < r->nargs; i++) {
        arg *a = &r->args[i];
        memset(a, 0, sizeof *a);
        const int tag = read_i32(f);
        if (tag == 0) {
            read_exact(f, &a->value, 8);
        } else if (tag == 1) {
            a->is_null = 1;
        } else {
            a->is_buffer = 1;
            a->data = read_blob(f, &a->len);
            guard(a);
        }
    }
    r->nblobs = read_i32(f);
    if (r->nblobs > MAX_BLOBS) die("too many expected blobs");
    for (int i = 0; i < r->nblobs; i++) r->blob[i] = read_blob(f, &r->blob_len[i]);
    return 1;
}

#define P(i) (r->args[i].is_null ? NULL : r->args[i].guarded)
#define I(i) (r->args[i].value)

static int call(record *r)
{
    switch (r->kind) {
    case LUT_DECODE:
        return wp_lut_decode(P(0), I(1), (int)I(2), P(3), I(4), I(5), I(6), P(7), I(8), P(9), P(10), P(11), I(12),
                             (int)I(13), (int)I(14), (int)I(15), P(16), I(17), I(18), P(19), I(20));
    case SPARSE_DECODE:
        return wp_sparse_decode(P(0), I(1), I(2), P(3), I(4), (int)I(5), (int)I(6), P(7), I(8));
    case SHIFT_SCALE_DECODE:
        return wp_shift_scale_decode(P(0), I(1), (int)I(2), (int)I(3), P(4), I(5), I(6), I(7), P(8), I(9), P(10), P(11),
                                     I(12), (int)I(13), P(14), I(15), (int)I(16));
    case LUT_MATVEC:
        return wp_lut_matvec(P(0), I(1), (int)I(2), P(3), I(4), P(5), I(6), I(7), P(8), I(9), P(10), P(11), P(12), I(13),
                             P(14), I(15), I(16), P(17), I(18));
    case QUANT_MATVEC:
        return wp_quant_matvec(P(0), I(1), (int)I(2), (int)I(3), P(4), I(5), P(6), I(7), I(8), P(9), I(10), P(11), P(12),
                               I(13), (int)I(14), P(15), I(16), I(17), P(18), I(19));
    case SPARSE_MATVEC:
        return wp_sparse_matvec(P(0), I(1), P(2), I(3), I(4), P(5), I(6), (int)I(7), P(8), I(9), I(10), P(11), I(12));
    default:
        return wp_fast_matvec(P(0), I(1), (int)I(2), (int)I(3), I(4), I(5), P(6), I(7), P(8), P(9), P(10), I(11), P(12),
                              I(13), I(14), P(15), I(16));
    }
}

static int fail(const record *r, const char *level, const char *fmt, double a, double b)
{
    fprintf(stderr, "FAIL [%s] %s (%s): ", level, KIND_NAMES[r->kind], r->label);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    return 1;
}

/* Decompression: the expected bytes exactly (blob 0), when the call succeeds. */
static int check_decode(const record *r, const char *level, const uint8_t *out, size_t len)
{
    if (r->blob_len[0] != len) return fail(r, level, "expected %g bytes, the output has %g", (double)r->blob_len[0], (double)len);
    for (size_t i = 0; i < len; i++)
        if (out[i] != r->blob[0][i])
            return fail(r, level, "byte %g differs (got %g)", (double)i, (double)out[i]);
    return 0;
}

/* Exact products: per output, |y - exact| <= bound (blobs: exact, bound as float64). */
static int check_product(const record *r, const char *level, const float *y, size_t n)
{
    const double *exact = (const double *)r->blob[0], *bound = (const double *)r->blob[1];
    if (r->blob_len[0] != 8 * n || r->blob_len[1] != 8 * n) return fail(r, level, "expected %g outputs, got %g", (double)r->blob_len[0] / 8, (double)n);
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)y[i] - exact[i]) <= bound[i]))
            return fail(r, level, "output off by %g, allowed %g", fabs((double)y[i] - exact[i]), bound[i]);
    return 0;
}

/* Fast mode: relative error of the whole output under rtol (blob 1); within 1e-4 of the x86
   kernel's output (blob 2) when it ran. */
static int check_fast(const record *r, const char *level, const float *y, size_t n)
{
    const double *exact = (const double *)r->blob[0], rtol = *(const double *)r->blob[1];
    double err = 0, norm = 0, diff = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
        err += ((double)y[i] - exact[i]) * ((double)y[i] - exact[i]);
        norm += exact[i] * exact[i];
    }
    if (!(sqrt(err) <= rtol * sqrt(norm))) return fail(r, level, "relative error %g, allowed %g", sqrt(err / norm), rtol);
    if (r->blob_len[2] == 4 * n) {
        const float *x86 = (const float *)r->blob[2];
        for (size_t i = 0; i < n; i++) {
            diff += ((double)y[i] - x86[i]) * ((double)y[i] - x86[i]);
            ref += (double)x86[i] * x86[i];
        }
        if (!(sqrt(diff) <= 1e-4 * sqrt(ref) + 1e-30)) return fail(r, level, "differs from the x86 kernel by %g (relative; allowed %g)", sqrt(diff / ref), 1e-4);
    }
    return 0;
}

/* Make the record's expectation wrong. */
static void corrupt(record *r)
{
    if (r->expect_status) {
        r->expect_status = 0;
    } else if (r->kind <= SHIFT_SCALE_DECODE) {
        r->blob[0][0] ^= 1;
    } else if (r->kind == FAST_MATVEC) {
        double *exact = (double *)r->blob[0];
        for (size_t i = 0; i < r->blob_len[0] / 8; i++) exact[i] = 3 * exact[i] + 1;
    } else {
        double *exact = (double *)r->blob[0];
        exact[0] += 2 * ((const double *)r->blob[1])[0] + 1;
    }
}

static int run(record *r, int level, const char *level_name, int fast_level)
{
    arg *out = &r->args[OUT_ARG[r->kind]];
    memset(out->guarded, SENTINEL, out->len);
    const int status = call(r);
    int expect = r->expect_status;
    if (r->kind == FAST_MATVEC && level < fast_level) expect = STATUS_NOT_AVAILABLE;
    if (r->kind == FAST_MATVEC && expect == STATUS_NOT_AVAILABLE && level >= fast_level) /* unknown on x86 */
        expect = status == STATUS_ARG ? STATUS_ARG : 0;
    if (status != expect) return fail(r, level_name, "status %g, expected %g", (double)status, (double)expect);
    if (status) { /* refused: nothing written */
        for (size_t i = 0; i < out->len; i++)
            if (((uint8_t *)out->guarded)[i] != SENTINEL) return fail(r, level_name, "refused but wrote byte %g of %g", (double)i, (double)out->len);
        return 0;
    }
    switch (r->kind) {
    case LUT_DECODE:
    case SPARSE_DECODE:
    case SHIFT_SCALE_DECODE:
        return check_decode(r, level_name, out->guarded, out->len);
    case FAST_MATVEC:
        return check_fast(r, level_name, out->guarded, out->len / 4);
    default:
        return check_product(r, level_name, out->guarded, out->len / 4);
    }
}

int main(int argc, char **argv)
{
    const char *path = NULL, *levels = NULL, *expect_level = NULL;
    int threads = 3, corrupted = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--levels") && i + 1 < argc) levels = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--expect-level") && i + 1 < argc) expect_level = argv[++i];
        else if (!strcmp(argv[i], "--corrupt")) corrupted = 1;
        else path = argv[i];
    }
    if (!path) die("usage: driver VECTORS [--levels a,b] [--threads N] [--expect-level NAME] [--corrupt]");
    const int best = wp_cpu_simd_level();
    printf("CPU level: %s; threads: %d (%s)\n", wp_simd_level_name(best), wp_set_threads(threads), wp_threading());
    if (expect_level && strcmp(expect_level, wp_simd_level_name(best))) {
        fprintf(stderr, "FAIL: detected level %s, expected %s\n", wp_simd_level_name(best), expect_level);
        return 1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the vector file");
    char magic[4];
    read_exact(f, magic, 4);
    if (memcmp(magic, "WPV1", 4)) die("not a vector file");
    size_t count = 0, cap = 256;
    record *records = malloc(cap * sizeof *records);
    while (records && read_record(f, &records[count])) {
        if (++count == cap) records = realloc(records, (cap *= 2) * sizeof *records);
    }
    if (!records) die("out of memory");
    fclose(f);
    if (corrupted)
        for (size_t i = 0; i < count; i++) corrupt(&records[i]);
    int failures = 0, checks = 0;
    for (int level = 0; level <= best; level++) {
        const char *name = wp_simd_level_name(level);
        if (levels && !strstr(levels, name)) continue;
        if (wp_set_simd_level(level) != level) die("cannot set the level");
        int level_failures = 0;
        for (size_t i = 0; i < count; i++) {
            /* below its level fast mode only declines: nothing a corrupted expectation changes */
            if (corrupted && records[i].kind == FAST_MATVEC && level < wp_fast_min_level()) continue;
            level_failures += run(&records[i], level, name, wp_fast_min_level());
            checks++;
        }
        printf("level %-8s %zu records, %d failed\n", name, count, level_failures);
        failures += level_failures;
    }
    if (corrupted) {
        printf("%d checks of corrupted expectations, %d caught\n", checks, failures);
        return failures == checks ? 0 : 1;
    }
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
