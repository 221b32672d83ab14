/* Producer/consumer batches (after the published behaviour of xmalloc-test): producer threads
 * allocate batches of blocks and pass each batch through a bounded queue to consumer threads,
 * which check and free them. Every free is a cross-thread free. */
#include <pthread.h>
#include "bench.h"

enum { PRODUCERS = 2, CONSUMERS = 2, BATCH = 256, QUEUE = 16 };

typedef struct { void *p[BATCH]; size_t n[BATCH]; } batch;

static batch *queue[QUEUE];
static int head, tail, count, producers_left = PRODUCERS;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER, not_empty = PTHREAD_COND_INITIALIZER;
static long batches_each;
static uint64_t freed_bytes[CONSUMERS];

static void *produce(void *arg) {
  rng_t r = rng_new((uint64_t)(uintptr_t)arg);
  for (long b = 0; b < batches_each; b++) {
    batch *bt = xmalloc(sizeof *bt);
    for (int i = 0; i < BATCH; i++) {
      size_t n = rng_range(&r, 16, 256);
      bt->p[i] = xmalloc(n);
      bt->n[i] = n;
      tag_block(bt->p[i], n, n);
    }
    pthread_mutex_lock(&lock);
    while (count == QUEUE) pthread_cond_wait(&not_full, &lock);
    queue[tail] = bt;
    tail = (tail + 1) % QUEUE;
    count++;
    pthread_cond_signal(&not_empty);
    pthread_mutex_unlock(&lock);
  }
  pthread_mutex_lock(&lock);
  producers_left--;
  pthread_cond_broadcast(&not_empty);
  pthread_mutex_unlock(&lock);
  return NULL;
}

static void *consume(void *arg) {
  uint64_t *sum = arg;
  for (;;) {
    pthread_mutex_lock(&lock);
    while (count == 0 && producers_left > 0) pthread_cond_wait(&not_empty, &lock);
    if (count == 0) {
      pthread_mutex_unlock(&lock);
      return NULL;
    }
    batch *bt = queue[head];
    head = (head + 1) % QUEUE;
    count--;
    pthread_cond_signal(&not_full);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < BATCH; i++) {
      check_block(bt->p[i], bt->n[i], bt->n[i]);
      *sum += bt->n[i];
      free(bt->p[i]);
    }
    free(bt);
  }
}

int main(int argc, char **argv) {
  batches_each = scaled(9000, bench_scale(argc, argv));
  pthread_t p[PRODUCERS], c[CONSUMERS];
  for (int i = 0; i < CONSUMERS; i++)
    if (pthread_create(&c[i], NULL, consume, &freed_bytes[i])) die("pthread_create");
  for (int i = 0; i < PRODUCERS; i++)
    if (pthread_create(&p[i], NULL, produce, (void *)(uintptr_t)(i + 1))) die("pthread_create");
  for (int i = 0; i < PRODUCERS; i++) pthread_join(p[i], NULL);
  uint64_t sum = 0;
  for (int i = 0; i < CONSUMERS; i++) {
    pthread_join(c[i], NULL);
    sum += freed_bytes[i];
  }
  printf("check %llu\n", (unsigned long long)sum);
  return 0;
}
