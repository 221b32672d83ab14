/* An allocation-heavy C program for the record-overhead benchmark and the C scenario: threads
 * that allocate and free blocks of mixed sizes, hand some to each other (cross-thread frees),
 * and check them. Argument: steps per thread (default 400000). Marks its phases with hl_mark
 * when heaplens is preloaded. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
static long STEPS = 400000;
#define LIVE 4096

static void *volatile handoff[THREADS][256];

/* heaplens's marker, present when libheaplens.so is preloaded. */
extern void hl_mark(const char *label) __attribute__((weak));
static void mark(const char *label) { if (hl_mark) hl_mark(label); }

static uint64_t next(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

static void *work(void *arg) {
    long id = (long)arg;
    uint64_t s = 0x9E3779B97F4A7C15ull ^ (uint64_t)id;
    void *slots[LIVE] = {0};
    uint64_t sum = 0;
    for (long i = 0; i < STEPS; i++) {
        size_t k = next(&s) % LIVE;
        if (slots[k]) { sum += ((unsigned char *)slots[k])[0]; free(slots[k]); }
        size_t size = (next(&s) % 8 == 0) ? 1024 + next(&s) % 16384 : 8 + next(&s) % 256;
        slots[k] = malloc(size);
        memset(slots[k], (int)(i & 0xff), 8);
        if (i % 16 == 0) { /* free a block the previous thread handed us; hand one to the next */
            size_t h = (i / 16) % 256;
            free(__atomic_exchange_n(&handoff[id][h], NULL, __ATOMIC_ACQ_REL));
            void *old = __atomic_exchange_n(&handoff[(id + 1) % THREADS][h], malloc(64), __ATOMIC_ACQ_REL);
            free(old); /* not taken yet: ours, freed locally */
        }
    }
    for (size_t k = 0; k < LIVE; k++) free(slots[k]);
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    if (argc > 1) STEPS = atol(argv[1]);
    if (STEPS <= 0) { fprintf(stderr, "usage: %s [steps per thread]\n", argv[0]); return 2; }
    mark("threads start");
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, (void *)i);
    uint64_t total = 0;
    for (int i = 0; i < THREADS; i++) { void *r; pthread_join(t[i], &r); total += (uintptr_t)r; }
    mark("threads joined");
    for (int i = 0; i < THREADS; i++) for (int h = 0; h < 256; h++) free(handoff[i][h]);
    printf("%llu\n", (unsigned long long)total);
    return 0;
}
