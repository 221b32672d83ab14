/* Large blocks: 32 live blocks of 64 KiB .. 8 MiB (log-uniform), replaced at random, every page
 * written; one block in four is grown with realloc instead. Stresses large and huge pages, the
 * OS mapping, purging and reuse, and realloc of big blocks. */
#include "bench.h"

enum { LIVE = 32 };

static size_t big_size(rng_t *r) {
  int shift = 16 + (int)(rng_next(r) % 7); /* 64 KiB .. 4 MiB */
  size_t base = (size_t)1 << shift;
  return base + (size_t)(rng_next(r) % base);
}

static void touch(char *p, size_t n, char v) {
  for (size_t i = 0; i < n; i += 4096) p[i] = v;
  p[n - 1] = v;
}

int main(int argc, char **argv) {
  long steps = scaled(1500, bench_scale(argc, argv));
  char *slot[LIVE];
  size_t size[LIVE];
  rng_t r = rng_new(3);
  uint64_t sum = 0;
  for (int i = 0; i < LIVE; i++) {
    size[i] = big_size(&r);
    slot[i] = xmalloc(size[i]);
    touch(slot[i], size[i], (char)i);
  }
  for (long s = 0; s < steps; s++) {
    int i = (int)(rng_next(&r) % LIVE);
    if (slot[i][0] != (char)i || slot[i][size[i] - 1] != (char)i) die("block contents changed");
    size_t n = big_size(&r);
    if ((s & 3) == 0 && n > size[i]) {
      char *q = realloc(slot[i], n);
      if (!q) die("out of memory");
      slot[i] = q;
    } else {
      free(slot[i]);
      slot[i] = xmalloc(n);
    }
    size[i] = n;
    touch(slot[i], n, (char)i);
    sum += n;
  }
  for (int i = 0; i < LIVE; i++) free(slot[i]);
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
