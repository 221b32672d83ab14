/* A single-thread loop over mixed small sizes (8..512 bytes, most under 128): a window of 2000
 * live blocks where each step frees a random one and allocates a new size in its place, so
 * blocks of every small bin are freed in an order unrelated to allocation. */
#include "bench.h"

int main(int argc, char **argv) {
  long steps = scaled(32000000, bench_scale(argc, argv));
  enum { LIVE = 2000 };
  void *slot[LIVE];
  size_t size[LIVE];
  rng_t r = rng_new(1);
  uint64_t sum = 0;
  for (int i = 0; i < LIVE; i++) {
    size[i] = 8;
    slot[i] = xmalloc(8);
    tag_block(slot[i], 8, (uint64_t)i);
  }
  for (long s = 0; s < steps; s++) {
    uint64_t x = rng_next(&r);
    int i = (int)(x % LIVE);
    check_block(slot[i], size[i], (uint64_t)i);
    free(slot[i]);
    size_t n = (x >> 32) & 3 ? 8 + ((x >> 20) & 127) : 8 + ((x >> 20) & 511);
    size[i] = n;
    slot[i] = xmalloc(n);
    tag_block(slot[i], n, (uint64_t)i);
    sum += n;
  }
  for (int i = 0; i < LIVE; i++) free(slot[i]);
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
