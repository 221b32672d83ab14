/* Random-size multithreaded churn with cross-thread frees (after the published behaviour of
 * mimalloc-bench's mstress and xmalloc): threads replace random blocks (8 B .. 4 KiB, mostly
 * small) in a private window, and every 16th block goes to a shared table where a random
 * thread later frees it. */
#include <pthread.h>
#include <stdatomic.h>
#include "bench.h"

enum { THREADS = 4, LOCAL = 2048, SHARED = 4096 };

static _Atomic(void *) shared[SHARED];
static long steps_each;

static size_t churn_size(rng_t *r) {
  uint64_t x = rng_next(r);
  return (x & 7) ? 8 + (size_t)((x >> 8) % 248) : 8 + (size_t)((x >> 8) % 4088);
}

static void *run(void *arg) {
  rng_t r = rng_new((uint64_t)(uintptr_t)arg);
  void **local = calloc(LOCAL, sizeof *local);
  if (!local) die("out of memory");
  uint64_t sum = 0;
  for (long s = 0; s < steps_each; s++) {
    size_t n = churn_size(&r);
    size_t *p = xmalloc(n < 16 ? 16 : n);
    p[0] = n;
    p[1] = ~n;
    uint64_t x = rng_next(&r);
    if ((x & 15) == 0) {
      size_t *old = atomic_exchange(&shared[(x >> 8) % SHARED], (void *)p);
      if (old) {
        if (old[1] != ~old[0]) die("block contents changed");
        sum += old[0];
        free(old);
      }
    } else {
      size_t i = (size_t)((x >> 8) % LOCAL);
      size_t *old = local[i];
      local[i] = p;
      if (old) {
        if (old[1] != ~old[0]) die("block contents changed");
        sum += old[0];
        free(old);
      }
    }
  }
  for (size_t i = 0; i < LOCAL; i++)
    if (local[i]) {
      sum += ((size_t *)local[i])[0];
      free(local[i]);
    }
  free(local);
  return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
  steps_each = scaled(3000000, bench_scale(argc, argv));
  pthread_t tid[THREADS];
  for (int t = 0; t < THREADS; t++)
    if (pthread_create(&tid[t], NULL, run, (void *)(uintptr_t)(t + 1))) die("pthread_create");
  uint64_t sum = 0;
  for (int t = 0; t < THREADS; t++) {
    void *ret;
    pthread_join(tid[t], &ret);
    sum += (uint64_t)(uintptr_t)ret;
  }
  for (int i = 0; i < SHARED; i++) {
    size_t *p = atomic_load(&shared[i]);
    if (p) {
      sum += p[0];
      free(p);
    }
  }
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
