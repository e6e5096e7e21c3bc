/* Dispatch state shared by the kernel files. */
#ifndef WP_DISPATCH_H
#define WP_DISPATCH_H

int wp_simd_level(void); /* 0 scalar, 1 AVX2, 2 AVX-512 */
int wp_threads(void);

#endif
