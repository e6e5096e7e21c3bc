/* Dispatch state shared by the kernel files. */
#ifndef WP_DISPATCH_H
#define WP_DISPATCH_H

#include "wp_parallel.h"
#include "wp_target.h"

int wp_simd_level(void); /* the level in force: WP_LEVEL_* of wp_target.h */

#endif
