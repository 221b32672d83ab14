/* A single-thread malloc/free loop of one small size: allocate a batch of 64-byte blocks, write
 * them, free them in allocation order; and the same loop one block at a time (malloc then free
 * at once). The allocator's fast paths and nothing else. */
#include "bench.h"

int main(int argc, char **argv) {
  long rounds = scaled(32000, bench_scale(argc, argv));
  enum { BATCH = 1000, SIZE = 64 };
  void *slots[BATCH];
  uint64_t sum = 0;
  for (long r = 0; r < rounds; r++) {
    for (int i = 0; i < BATCH; i++) {
      slots[i] = xmalloc(SIZE);
      *(uint64_t *)slots[i] = (uint64_t)(r + i);
    }
    for (int i = 0; i < BATCH; i++) {
      sum += *(uint64_t *)slots[i];
      free(slots[i]);
    }
    for (int i = 0; i < BATCH; i++) {
      volatile uint64_t *p = xmalloc(SIZE);
      *p = (uint64_t)i;
      sum += *p;
      free((void *)p);
    }
  }
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
