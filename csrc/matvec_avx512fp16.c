/*
 * AVX512-FP16 row workers (CPU level 3: Sapphire Rapids and newer Intel server CPUs).
 *
 * Core ML decodes a quantized weight with binary16 scales as fp16(scale * fp16(q - offset)):
 * every step rounded to binary16.  vsubph / vmulph round exactly so, 32 weights per
 * instruction, where the AVX-512 path needs a float32 product and a round trip through
 * vcvtps2ph / vcvtph2ps for every 16.  The binary16 weights then widen to float32 for the FMAs
 * (float32 accumulation, as every exact kernel).  Four rows share each load of x.
 */
#include "wp_target.h"
#if WP_X86 && WP_HAVE_AVX512FP16
WP_TARGET_PUSH(WP_AVX512_FEATURES ",avx512fp16")
#include <immintrin.h>

#include "matvec.h"

#define ROW_TILE 4
#define BATCH_TILE 2

/* A row's table (block of columns): its scale and offset broadcast as binary16. */
typedef struct {
    __m512h scale, offset;
} half_table;

WP_INLINE half_table load_half_table(const wp_quant_mv *a, long long t)
{
    const uint16_t *scale = a->scale, *offset = a->offset;
    half_table h;
    h.scale = _mm512_castsi512_ph(_mm512_set1_epi16((short)scale[t]));
    h.offset = _mm512_castsi512_ph(_mm512_set1_epi16(offset ? (short)offset[t] : 0));
    return h;
}

/* 32 weights of 8-bit codes, decoded as Core ML does, widened to float32 (columns 0-15, 16-31). */
WP_INLINE void decode32(const wp_quant_mv *a, const uint8_t *codes, half_table h, __m512 *w0, __m512 *w1)
{
    const __m256i bytes = _mm256_loadu_si256((const __m256i *)codes);
    const __m512i q = a->is_signed ? _mm512_cvtepi8_epi16(bytes) : _mm512_cvtepu8_epi16(bytes);
    __m512h v = _mm512_cvtepi16_ph(q); /* exact: |q| < 2048 */
    if (a->offset) v = _mm512_sub_ph(v, h.offset);
    v = _mm512_mul_ph(v, h.scale);
    const __m512i bits = _mm512_castph_si512(v);
    *w0 = _mm512_cvtph_ps(_mm512_castsi512_si256(bits));
    *w1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(bits, 1));
}

WP_INLINE void int8_tile(const void *args, const wp_mv_common *c, const void *unused, long long r, int rt,
                         long long b0, int bt)
{
    (void)unused;
    const wp_quant_mv *a = args;
    __m512 acc[ROW_TILE][BATCH_TILE][2];
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++) acc[i][b][0] = acc[i][b][1] = _mm512_setzero_ps();
    for (long long j0 = 0; j0 < c->cols; j0 += c->col_block) {
        half_table table[ROW_TILE];
        for (int i = 0; i < rt; i++) table[i] = load_half_table(a, c->row_table[r + i] + j0 / c->col_block);
        for (long long j = j0; j < j0 + c->col_block; j += 32) {
            MCA_BEGIN("vmulph");
            __m512 x0[BATCH_TILE], x1[BATCH_TILE];
            for (int b = 0; b < bt; b++) {
                x0[b] = _mm512_loadu_ps(c->x + (b0 + b) * c->cols + j);
                x1[b] = _mm512_loadu_ps(c->x + (b0 + b) * c->cols + j + 16);
            }
            for (int i = 0; i < rt; i++) {
                const uint8_t *codes = c->codes + (r + i) * c->cols + j;
                if (!(j & 63)) __builtin_prefetch(codes + rt * c->cols); /* the next tile's rows */
                __m512 w0, w1;
                decode32(a, codes, table[i], &w0, &w1);
                for (int b = 0; b < bt; b++) {
                    acc[i][b][0] = _mm512_fmadd_ps(w0, x0[b], acc[i][b][0]);
                    acc[i][b][1] = _mm512_fmadd_ps(w1, x1[b], acc[i][b][1]);
                }
            }
            MCA_END();
        }
    }
    for (int i = 0; i < rt; i++)
        for (int b = 0; b < bt; b++)
            c->y[(b0 + b) * c->rows + r + i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][b][0], acc[i][b][1]));
}

static void int8_rows(const void *args, long long r0, long long r1)
{
    const wp_mv_common *c = &((const wp_quant_mv *)args)->c;
    WP_RUN_TILES(int8_tile, args, c, NULL, r0, r1, ROW_TILE, BATCH_TILE);
}

wp_rows_plan wp_quant_rows_avx512fp16(const wp_quant_mv *a)
{
    const wp_mv_common *c = &a->c;
    if (!a->half_math || c->mask || c->nbits != 8 || c->col_block % 32 || c->cols % c->col_block) return WP_NO_ROWS;
    return WP_ROWS(int8_rows);
}

WP_TARGET_POP()
#endif
