/* Shared by the C workloads of the LD_PRELOAD suite (`benches/c_suite.rs`): a small PRNG, the
 * work scale from argv[1], a checksum every workload prints, and fatal errors.
 * Every workload prints one line, "check <number>", that must be the same under every allocator:
 * a broken allocator fails instead of looking fast. */
#ifndef HEAPLENS_BENCH_H
#define HEAPLENS_BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* xorshift64*: fast, and the same sequence under every allocator. */
typedef struct { uint64_t s; } rng_t;

static inline rng_t rng_new(uint64_t seed) {
  rng_t r = {seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull};
  if (r.s == 0) r.s = 1;
  return r;
}

static inline uint64_t rng_next(rng_t *r) {
  uint64_t x = r->s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  r->s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [lo, hi]. */
static inline size_t rng_range(rng_t *r, size_t lo, size_t hi) {
  return lo + (size_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* The work multiplier: argv[1] if given (a positive number), else 1. */
static inline double bench_scale(int argc, char **argv) {
  if (argc > 1) {
    double s = atof(argv[1]);
    if (s > 0) return s;
  }
  return 1.0;
}

static inline long scaled(long n, double scale) {
  long v = (long)((double)n * scale);
  return v < 1 ? 1 : v;
}

static inline void die(const char *what) {
  fprintf(stderr, "fatal: %s\n", what);
  exit(2);
}

static inline void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) die("out of memory");
  return p;
}

/* Writes a tag over the first and last word of a block, and checks it before a free. */
static inline void tag_block(void *p, size_t n, uint64_t tag) {
  memcpy(p, &tag, sizeof tag < n ? sizeof tag : n);
  if (n >= 16) memcpy((char *)p + n - 8, &tag, 8);
}

static inline void check_block(const void *p, size_t n, uint64_t tag) {
  uint64_t a = 0, b = tag;
  memcpy(&a, p, sizeof tag < n ? sizeof tag : n);
  if (n >= 16) memcpy(&b, (const char *)p + n - 8, 8);
  if (n < 8) { uint64_t m = (1ull << (8 * n)) - 1; a &= m; tag &= m; b = tag; }
  if (a != tag || b != tag) die("block contents changed while it was live");
}

#endif
