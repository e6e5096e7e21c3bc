/*
 * Fast mode for batches of 16 and more on Intel AMX (Sapphire Rapids and newer): tile matrix
 * products of bfloat16 with float32 accumulation.
 *
 * Each weight keeps fast mode's value w = s_t * (u - c_t) (fast.c: u an unsigned byte, the LUT's
 * int8 rounding or the code itself), rounded to bfloat16; activations are rounded to bfloat16
 * too (instead of fast mode's int8 per block of 32). A block of 16 rows is decoded into a bf16
 * scratch (one row of K values per weight row), then TDPBF16PS multiplies 16 rows x 32 columns
 * of it by 32 columns x 16 batch items of the activations, accumulating a 16 x 16 float32 tile.
 *
 * Within every group of 16*per columns (per = 8/n codes per byte) the K axis runs in phase
 * order - code p of 16 bytes, p = 0..per-1 - so each phase decodes from 16 bytes with shifts;
 * the activations are laid out in the same order, which leaves every dot product unchanged.
 */
#include "wp_target.h"
#if WP_X86 && WP_HAVE_AMX
WP_TARGET_PUSH(WP_AVX512_FEATURES ",avx512bf16,amx-tile,amx-bf16")
#include <immintrin.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "fast.h"
#include "wp_parallel.h"

#define TILE 16  /* rows of an output tile, batch items of an output tile */
#define KSTEP 32 /* bf16 elements of K per tile product */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Tiles 0-3 accumulate (16 rows x 16 batch items of float32), 4 holds weights, 5 activations. */
static void configure_tiles(void)
{
    tile_config config = {0};
    config.palette = 1;
    for (int t = 0; t < 6; t++) {
        config.rows[t] = TILE;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
}

typedef struct {
    const wp_fast_args *a;
    const uint16_t *xb; /* per batch chunk of 16: K/2 rows of (16 items x 2) bf16, VNNI order */
    long long chunks;   /* batch chunks of 16 (the last padded with zeros) */
    _Atomic int failed; /* a thread could not allocate its scratch */
} amx_job;

/* Row r's weights in K order as bf16. */
static void decode_row(const wp_fast_args *a, long long r, uint16_t *out)
{
    const int n = a->nbits, per = 8 / n;
    const long long len = a->cols / per;
    const uint8_t *codes = a->codes + r * len;
    const __m512i low = _mm512_set1_epi32((1 << n) - 1);
    const __m512i flip = _mm512_set1_epi32(a->is_signed && !a->table_u8 ? 1 << (n - 1) : 0);
    __m512 table = _mm512_setzero_ps();
    long long table_id = -1;
    for (long long k = 0; k < len; k += 16) { /* 16 bytes: 16 * per columns */
        const long long t = a->row_table[r] + k * per / a->col_block;
        if (t != table_id) {
            table_id = t;
            if (a->table_u8) table = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(a->table_u8 + 16 * t))));
        }
        const __m512 scale = _mm512_set1_ps(a->table_scale[t]), bias = _mm512_set1_ps(wp_fast_bias(a, t));
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + k)));
        __m512 w[8];
        for (int p = 0; p < per; p++) {
            const __m512i code = _mm512_and_si512(_mm512_srli_epi32(bytes, (unsigned)(p * n)), low);
            const __m512 u = a->table_u8 ? _mm512_permutexvar_ps(code, table) : _mm512_cvtepi32_ps(_mm512_xor_si512(code, flip));
            w[p] = _mm512_mul_ps(scale, _mm512_sub_ps(u, bias));
        }
        uint16_t *dst = out + k * per;
        for (int p = 0; p + 1 < per; p += 2)
            _mm512_storeu_si512(dst + 16 * p, (__m512i)_mm512_cvtne2ps_pbh(w[p + 1], w[p]));
        if (per == 1) _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(w[0]));
    }
}

static void amx_rows(void *ctx, long long block0, long long block1)
{
    amx_job *job = ctx;
    const wp_fast_args *a = job->a;
    const long long K = a->cols;
    uint16_t *scratch = aligned_alloc(64, (size_t)(TILE * K * 2));
    if (!scratch) {
        atomic_store(&job->failed, 1);
        return;
    }
    float out[TILE * TILE];
    configure_tiles();
    for (long long block = block0; block < block1; block++) {
        const long long r0 = block * TILE, nrows = a->rows - r0 < TILE ? a->rows - r0 : TILE;
        for (long long i = 0; i < TILE; i++) {
            if (i < nrows) decode_row(a, r0 + i, scratch + i * K);
            else memset(scratch + i * K, 0, (size_t)K * 2);
        }
        for (long long c0 = 0; c0 < job->chunks; c0 += 4) { /* up to 4 batch chunks share each weight tile */
            const long long nc = job->chunks - c0 < 4 ? job->chunks - c0 : 4;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (long long k = 0; k < K; k += KSTEP) {
                _tile_loadd(4, scratch + k, K * 2);
#define PRODUCT(c)                                                                              \
    if (c < nc) {                                                                               \
        _tile_loadd(5, job->xb + (c0 + c) * K * TILE + k * TILE, 64);                           \
        _tile_dpbf16ps(c, 4, 5);                                                                \
    }
                PRODUCT(0) PRODUCT(1) PRODUCT(2) PRODUCT(3)
#undef PRODUCT
            }
#define STORE(c)                                                                                \
    if (c < nc) {                                                                               \
        _tile_stored(c, out, TILE * 4);                                                         \
        for (long long i = 0; i < nrows; i++)                                                   \
            for (long long b = 0; b < TILE && (c0 + c) * TILE + b < a->batch; b++)              \
                a->y[((c0 + c) * TILE + b) * a->rows + r0 + i] = out[i * TILE + b];             \
    }
            STORE(0) STORE(1) STORE(2) STORE(3)
#undef STORE
        }
    }
    _tile_release();
    free(scratch);
}

/* x (batch x K) as the B tiles: bf16 in K order, pairs of K interleaved across 16 items. */
static int activation_tiles(const wp_fast_args *a, const float *x, long long chunks, uint16_t *xb)
{
    const int per = 8 / a->nbits;
    const long long K = a->cols, items = chunks * TILE;
    uint16_t *rows = aligned_alloc(64, (size_t)(items * K * 2)); /* item-major, K order */
    if (!rows) return WP_E_MEMORY;
    __m512i gather = _mm512_setzero_si512(); /* column of K position p*16 + i inside a group */
    int32_t columns[16];
    for (long long p = 0; p < per; p++) {
        for (int i = 0; i < 16; i++) columns[i] = (int32_t)(i * per + p);
        gather = _mm512_loadu_si512(columns);
        for (long long item = 0; item < items; item++)
            for (long long g = 0; g < K; g += 16 * per) {
                uint16_t *dst = rows + item * K + g + 16 * p;
                if (item >= a->batch) {
                    memset(dst, 0, 32);
                    continue;
                }
                const __m512 v = _mm512_i32gather_ps(gather, x + item * K + g, 4);
                _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(v));
            }
    }
    const __m512i items_apart = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                   _mm512_set1_epi32((int)(K / 2)));
    for (long long c = 0; c < chunks; c++)
        for (long long kk = 0; kk < K / 2; kk++) { /* dword kk of 16 items' rows */
            const __m512i pairs = _mm512_i32gather_epi32(items_apart, (const int *)(rows + c * TILE * K) + kk, 4);
            _mm512_storeu_si512(xb + c * K * TILE + kk * 2 * TILE, pairs);
        }
    free(rows);
    return WP_OK;
}

int wp_fast_amx_matvec(const wp_fast_args *a, const float *x)
{
    const int per = 8 / a->nbits;
    const long long K = a->cols, chunks = (a->batch + TILE - 1) / TILE;
    if (K % (16 * per) || K % KSTEP || K / 2 > INT32_MAX / TILE) return WP_NOT_COVERED;
    uint16_t *xb = aligned_alloc(64, (size_t)(chunks * K * TILE * 2));
    if (!xb) return WP_E_MEMORY;
    int rc = activation_tiles(a, x, chunks, xb);
    if (rc == WP_OK) {
        amx_job job = {a, xb, chunks, 0};
        wp_parallel_for((a->rows + TILE - 1) / TILE, 1, amx_rows, &job);
        if (atomic_load(&job.failed)) rc = WP_E_MEMORY;
    }
    free(xb);
    return rc;
}

WP_TARGET_POP()
#endif
