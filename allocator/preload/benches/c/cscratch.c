/* False sharing (after the published behaviour of Hoard's cache-scratch): the main thread
 * allocates one small block per worker and hands it over; each worker frees it, then repeatedly
 * allocates a block of the same size, writes it many times and frees it. An allocator that gives
 * two threads blocks on one cache line makes the writes slow (passive false sharing). */
#include <pthread.h>
#include "bench.h"

enum { THREADS = 4, SIZE = 8 };

static long iterations, writes;

static void *run(void *arg) {
  char *given = arg;
  free(given);
  uint64_t sum = 0;
  for (long i = 0; i < iterations; i++) {
    volatile char *p = xmalloc(SIZE);
    memset((void *)p, 0, SIZE);
    for (long w = 0; w < writes; w++) {
      for (int k = 0; k < SIZE; k++) p[k] = (char)(p[k] + (char)k + 1);
    }
    sum += (unsigned char)p[SIZE - 1];
    free((void *)p);
  }
  return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  iterations = scaled(50000, scale);
  writes = 1000;
  pthread_t tid[THREADS];
  for (int t = 0; t < THREADS; t++) {
    char *b = xmalloc(SIZE);
    memset(b, 0, SIZE);
    if (pthread_create(&tid[t], NULL, run, b)) die("pthread_create");
  }
  uint64_t sum = 0;
  for (int t = 0; t < THREADS; t++) {
    void *ret;
    pthread_join(tid[t], &ret);
    sum += (uint64_t)(uintptr_t)ret;
  }
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
