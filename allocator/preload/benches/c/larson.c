/* A larson-like server (after the published description of Larson and Krishnan's benchmark):
 * worker threads each own an array of blocks and replace random ones with new blocks of random
 * sizes; after a number of steps every worker exits and a new thread carries on with its array,
 * so blocks are freed by threads other than (and outliving) the ones that allocated them. */
#include <pthread.h>
#include "bench.h"

enum { THREADS = 4, GENERATIONS = 20, SLOTS = 1000, MIN_SIZE = 16, MAX_SIZE = 512 };

typedef struct {
  void *slot[SLOTS];
  size_t size[SLOTS];
  long steps;
  rng_t r;
  uint64_t sum;
} worker;

static void *run(void *arg) {
  worker *w = arg;
  for (long s = 0; s < w->steps; s++) {
    size_t i = rng_next(&w->r) % SLOTS;
    size_t n = rng_range(&w->r, MIN_SIZE, MAX_SIZE);
    check_block(w->slot[i], w->size[i], i);
    free(w->slot[i]);
    w->slot[i] = xmalloc(n);
    w->size[i] = n;
    tag_block(w->slot[i], n, i);
    w->sum += n;
  }
  return NULL;
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  static worker ws[THREADS];
  for (int t = 0; t < THREADS; t++) {
    worker *w = &ws[t];
    w->r = rng_new((uint64_t)t + 7);
    w->steps = scaled(240000, scale);
    for (int i = 0; i < SLOTS; i++) {
      size_t n = rng_range(&w->r, MIN_SIZE, MAX_SIZE);
      w->slot[i] = xmalloc(n);
      w->size[i] = n;
      tag_block(w->slot[i], n, (uint64_t)i);
    }
  }
  for (int g = 0; g < GENERATIONS; g++) {
    pthread_t tid[THREADS];
    for (int t = 0; t < THREADS; t++)
      if (pthread_create(&tid[t], NULL, run, &ws[t])) die("pthread_create");
    for (int t = 0; t < THREADS; t++) pthread_join(tid[t], NULL);
  }
  uint64_t sum = 0;
  for (int t = 0; t < THREADS; t++) {
    sum += ws[t].sum;
    for (int i = 0; i < SLOTS; i++) free(ws[t].slot[i]);
  }
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
