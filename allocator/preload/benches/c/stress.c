/* heaplens's own multithreaded stress: 8 threads per round, recreated every round, calling every
 * malloc-family entry point (malloc, calloc, realloc, reallocarray, posix_memalign,
 * aligned_alloc, memalign, valloc, malloc_usable_size, free) on sizes from 1 B to 256 KiB; half
 * of the blocks a thread frees were made by another thread (a shared table of blocks outlives
 * every round). Its figure is peak RSS: memory left by exited threads must be reused. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include "bench.h"

enum { THREADS = 8, ROUNDS = 12, LOCAL = 512, SHARED = 8192 };

static _Atomic(void *) shared[SHARED];
static long steps_each;

/* Block header: the requested size and its complement, checked before every free. */
typedef struct { size_t n, not_n; } hdr;

static size_t stress_size(rng_t *r) {
  uint64_t x = rng_next(r);
  switch (x & 15) {
    case 0: return 1 + (size_t)((x >> 8) % (256 * 1024)); /* up to 256 KiB */
    case 1: case 2: return 1 + (size_t)((x >> 8) % 16384);
    default: return 1 + (size_t)((x >> 8) % 512);
  }
}

static void *make(rng_t *r, size_t n) {
  size_t want = n < sizeof(hdr) ? sizeof(hdr) : n;
  void *p = NULL;
  switch (rng_next(r) % 8) {
    case 0: p = malloc(want); break;
    case 1: p = calloc(1, want);
      if (p && ((char *)p)[want - 1] != 0) die("calloc memory not zeroed");
      break;
    case 2: if (posix_memalign(&p, 64, want)) p = NULL; break;
    case 3: p = aligned_alloc(32, (want + 31) & ~(size_t)31); break;
    case 4: p = memalign(128, want); break;
    case 5: p = rng_next(r) % 16 ? malloc(want) : valloc(want); break;
    case 6: p = reallocarray(NULL, want, 1); break;
    default: {
      /* grow a small block with realloc up to the size */
      p = malloc(sizeof(hdr));
      if (!p) die("out of memory");
      void *q = realloc(p, want);
      if (!q) die("out of memory");
      p = q;
    }
  }
  if (!p) die("out of memory");
  if (malloc_usable_size(p) < want) die("malloc_usable_size below the request");
  hdr h = {n, ~n};
  memcpy(p, &h, sizeof h);
  return p;
}

static size_t release(void *p) {
  hdr h;
  memcpy(&h, p, sizeof h);
  if (h.not_n != ~h.n) die("block contents changed");
  free(p);
  return h.n;
}

static void *run(void *arg) {
  rng_t r = rng_new((uint64_t)(uintptr_t)arg);
  void *local[LOCAL] = {0};
  uint64_t sum = 0;
  for (long s = 0; s < steps_each; s++) {
    size_t n = stress_size(&r);
    void *p = make(&r, n);
    sum += n;
    uint64_t x = rng_next(&r);
    if (x & 1) {
      void *old = atomic_exchange(&shared[(x >> 8) % SHARED], p);
      if (old) release(old);
    } else {
      size_t i = (size_t)((x >> 8) % LOCAL);
      if (local[i]) {
        /* Sometimes resize a live block in place of replacing it. */
        if ((x >> 40) % 8 == 0) {
          size_t m = stress_size(&r);
          size_t want = m < sizeof(hdr) ? sizeof(hdr) : m;
          hdr h;
          memcpy(&h, local[i], sizeof h);
          if (h.not_n != ~h.n) die("block contents changed");
          void *q = realloc(local[i], want);
          if (!q) die("out of memory");
          hdr g = {h.n, ~h.n};
          memcpy(q, &g, sizeof g);
          local[i] = q;
        }
        release(local[i]);
      }
      local[i] = p;
    }
  }
  for (size_t i = 0; i < LOCAL; i++)
    if (local[i]) release(local[i]);
  return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
  steps_each = scaled(20000, bench_scale(argc, argv));
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
  for (int i = 0; i < SHARED; i++) {
    void *p = atomic_load(&shared[i]);
    if (p) release(p);
  }
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
