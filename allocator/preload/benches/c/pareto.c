/* An allocation test with Pareto-distributed sizes (after the published description of
 * alloc-test): most requests are small, a few are kilobytes; every thread keeps a window of live
 * blocks whose lifetimes are also skewed (most die young, a few live long). argv[2] is the thread
 * count (1 by default); threads share nothing, so this measures how the allocator scales. */
#include <math.h>
#include <pthread.h>
#include "bench.h"

enum { WINDOW = 1 << 14 };

typedef struct { long steps; unsigned seed; uint64_t sum; } job;

/* A size from a Pareto(alpha = 1.2, min = 8) distribution, capped at 64 KiB. */
static size_t pareto_size(rng_t *r) {
  double u = ((double)(rng_next(r) >> 11) + 1.0) / 9007199254740993.0;
  double s = 8.0 / pow(u, 1.0 / 1.2);
  return s > 65536.0 ? 65536 : (size_t)s;
}

static void *run(void *arg) {
  job *j = arg;
  void **slot = calloc(WINDOW, sizeof *slot);
  size_t *size = calloc(WINDOW, sizeof *size);
  if (!slot || !size) die("out of memory");
  rng_t r = rng_new(j->seed);
  uint64_t sum = 0;
  for (long s = 0; s < j->steps; s++) {
    uint64_t x = rng_next(&r);
    /* Young blocks: a slot among the last 256 touched; old ones anywhere in the window. */
    size_t i = (x & 15) ? (size_t)(s + (long)((x >> 8) & 255)) % WINDOW : (size_t)(x >> 20) % WINDOW;
    if (slot[i]) {
      check_block(slot[i], size[i], i);
      free(slot[i]);
    }
    size_t n = pareto_size(&r);
    size[i] = n;
    slot[i] = xmalloc(n);
    tag_block(slot[i], n, i);
    sum += n;
  }
  for (size_t i = 0; i < WINDOW; i++) free(slot[i]);
  free(slot);
  free(size);
  j->sum = sum;
  return NULL;
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  int threads = argc > 2 ? atoi(argv[2]) : 1;
  if (threads < 1 || threads > 64) die("thread count out of range");
  long steps = scaled(9000000, scale) / threads;
  pthread_t tid[64];
  job jobs[64];
  for (int t = 0; t < threads; t++) {
    jobs[t] = (job){steps, (unsigned)t + 1, 0};
    if (pthread_create(&tid[t], NULL, run, &jobs[t])) die("pthread_create");
  }
  uint64_t sum = 0;
  for (int t = 0; t < threads; t++) {
    pthread_join(tid[t], NULL);
    sum += jobs[t].sum;
  }
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
