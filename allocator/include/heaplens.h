/* heaplens.h: the prefixed C API of heaplens, a mimalloc-design allocator you can watch.
 *
 * Link with libheaplens.so:
 *     cc prog.c -I allocator/include -L target/release -lheaplens -Wl,-rpath,$PWD/target/release
 *
 * The hl_* functions always allocate from heaplens. Note that libheaplens.so also exports the
 * standard malloc family, so a program linked with it (or run with LD_PRELOAD=libheaplens.so)
 * gets heaplens behind plain malloc/free too; blocks from either may be freed by either.
 *
 * Failures follow C: NULL with errno ENOMEM for impossible sizes (including an overflowing
 * count * size) or when the OS has no memory, errno EINVAL for an alignment that is not a
 * power of two. Every block is aligned to 16 bytes.
 *
 * Environment: HEAPLENS_SHOW_STATS=1 prints the statistics summary to stderr at exit;
 * HEAPLENS_CHECK=1 turns on checked mode (double free, freeing a pointer heaplens never
 * returned, writing past the end of a block: a report on stderr, then abort).
 */
#ifndef HEAPLENS_H
#define HEAPLENS_H

#include <stddef.h> /* size_t */

#if defined(__GNUC__) || defined(__clang__)
#define hl_attr_malloc __attribute__((malloc))
#define hl_attr_alloc_size(n) __attribute__((alloc_size(n)))
#define hl_attr_alloc_size2(n, m) __attribute__((alloc_size(n, m)))
#define hl_attr_alloc_align(n) __attribute__((alloc_align(n)))
#define hl_attr_nodiscard __attribute__((warn_unused_result))
#else
#define hl_attr_malloc
#define hl_attr_alloc_size(n)
#define hl_attr_alloc_size2(n, m)
#define hl_attr_alloc_align(n)
#define hl_attr_nodiscard
#endif

#ifdef __cplusplus
#define hl_attr_noexcept noexcept
extern "C" {
#else
#define hl_attr_noexcept
#endif

/* Allocates at least `size` bytes, aligned to 16. hl_malloc(0) returns a unique pointer.
 * Returns NULL and sets errno to ENOMEM on failure. */
hl_attr_nodiscard void *hl_malloc(size_t size) hl_attr_noexcept hl_attr_malloc hl_attr_alloc_size(1);

/* Allocates `count * size` zeroed bytes. Returns NULL and sets errno to ENOMEM when the
 * product overflows or on failure. */
hl_attr_nodiscard void *hl_calloc(size_t count, size_t size) hl_attr_noexcept hl_attr_malloc
    hl_attr_alloc_size2(1, 2);

/* Resizes the block `p` to `size` bytes, keeping its contents up to the smaller size; the
 * block may move. hl_realloc(NULL, size) is hl_malloc(size); hl_realloc(p, 0) frees `p` and
 * returns a fresh minimal block. On failure returns NULL, sets errno to ENOMEM and leaves `p`
 * as it was (still yours to use and free). */
hl_attr_nodiscard void *hl_realloc(void *p, size_t size) hl_attr_noexcept hl_attr_alloc_size(2);

/* Frees a block from heaplens (from hl_* or, where heaplens replaces it, plain malloc).
 * hl_free(NULL) does nothing. */
void hl_free(void *p) hl_attr_noexcept;

/* Allocates `size` bytes aligned to `align`, which must be a power of two (any size, also
 * beyond the page size). Returns NULL with errno EINVAL when `align` is not a power of two,
 * NULL with errno ENOMEM on failure. Free with hl_free. */
hl_attr_nodiscard void *hl_malloc_aligned(size_t size, size_t align) hl_attr_noexcept hl_attr_malloc
    hl_attr_alloc_size(1) hl_attr_alloc_align(2);

/* Returns how many bytes the block `p` can hold: at least what was asked for. 0 for NULL. */
size_t hl_usable_size(const void *p) hl_attr_noexcept;

/* Writes a summary of the allocator's statistics (reserved, committed and used bytes,
 * segments, pages, threads, per-bin use) to stderr. Does not allocate. */
void hl_stats_print(void) hl_attr_noexcept;

/* A user marker: a labelled vertical line on the viewer's timeline at this moment (a phase of
 * the program, a request). Labels are cut at 64 bytes. Does nothing when no recording runs. */
void hl_mark(const char *label) hl_attr_noexcept;

#ifdef __cplusplus
}
#endif

#endif /* HEAPLENS_H */
