/* Threads recreated while exchanging power-of-two blocks (after the published behaviour of
 * rptest and mstress): each round starts a set of threads that allocate blocks of 16 B .. 64 KiB
 * (powers of two, small ones more often), swap them into a shared table (freeing whatever block
 * they take out, usually another thread's), and exit; the next round's threads find the table
 * full of blocks from threads that are gone. Peak RSS shows whether abandoned memory is reused.
 * argv[2] is log2 of the largest block (16 by default: 64 KiB; 20 makes 128 KiB .. 1 MiB blocks,
 * large pages, part of the mix). */
#include <pthread.h>
#include <stdatomic.h>
#include "bench.h"

enum { THREADS = 4, ROUNDS = 40, TABLE = 4096 };

static _Atomic(void *) table[TABLE];
static long steps_each;
static int max_shift = 16;

static size_t pow2_size(rng_t *r) {
  uint64_t x = rng_next(r);
  /* shift 4..max_shift, weighted towards small */
  int shift = 4 + (int)((x & 0xff) % (uint64_t)(max_shift - 3));
  if ((x >> 8) & 1) shift = 4 + (int)((x >> 9) % 6); /* half the time 16 B .. 512 B */
  return (size_t)1 << shift;
}

static void *run(void *arg) {
  rng_t r = rng_new((uint64_t)(uintptr_t)arg);
  uint64_t sum = 0;
  for (long s = 0; s < steps_each; s++) {
    size_t n = pow2_size(&r);
    size_t *p = xmalloc(n);
    p[0] = n;
    p[n / sizeof(size_t) - 1] = n;
    size_t i = (size_t)(rng_next(&r) % TABLE);
    size_t *old = atomic_exchange(&table[i], (void *)p);
    if (old) {
      if (old[old[0] / sizeof(size_t) - 1] != old[0]) die("block contents changed");
      sum += old[0];
      free(old);
    }
  }
  return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
  steps_each = scaled(24000, bench_scale(argc, argv));
  if (argc > 2) max_shift = atoi(argv[2]);
  if (max_shift < 5 || max_shift > 24) die("largest block shift out of range (5..24)");
  uint64_t sum = 0;
  for (int round = 0; round < ROUNDS; round++) {
    pthread_t tid[THREADS];
    for (int t = 0; t < THREADS; t++)
      if (pthread_create(&tid[t], NULL, run, (void *)(uintptr_t)(round * THREADS + t + 1)))
        die("pthread_create");
    for (int t = 0; t < THREADS; t++) {
      void *ret;
      pthread_join(tid[t], &ret);
      sum += (uint64_t)(uintptr_t)ret;
    }
  }
  for (int i = 0; i < TABLE; i++) {
    size_t *p = atomic_load(&table[i]);
    if (p) {
      sum += p[0];
      free(p);
    }
  }
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
