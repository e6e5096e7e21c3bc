/* weightpack C kernels: the declarations cffi reads (keep them plain C, no macros). */
/* Status codes: 0 success, negative values are errors (see WP_E_* in weightpack/_c.py). */

int wp_packed_nbytes(long long count, int nbits, long long *out_nbytes);
int wp_pack_bits(const unsigned char *values, long long count, int nbits,
                 unsigned char *out, long long out_len);
int wp_unpack_bits(const unsigned char *packed, long long packed_len, long long count,
                   int nbits, int sign_extend, unsigned char *out, long long out_len);
