/* A program whose allocations are known, for checking what `heaplens record` and `heaplens stats`
 * report: main allocates 1000 blocks and frees 900 (100 leak), a thread allocates 200 blocks that
 * main frees (cross-thread), then a marker "worker joined" if heaplens is preloaded. Argument "crash": dies of SIGSEGV after allocating. Exits with 3. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* heaplens's marker, present when libheaplens.so is preloaded. */
extern void hl_mark(const char *label) __attribute__((weak));

static void *blocks[200];

static void *worker(void *arg) {
    (void)arg;
    for (int i = 0; i < 200; i++) blocks[i] = malloc(48);
    return NULL;
}

int main(int argc, char **argv) {
    void *mine[1000];
    for (int i = 0; i < 1000; i++) { mine[i] = malloc(100); memset(mine[i], 1, 100); }
    for (int i = 0; i < 900; i++) free(mine[i]);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    pthread_join(t, NULL);
    if (hl_mark) hl_mark("worker joined");
    for (int i = 0; i < 200; i++) free(blocks[i]);
    if (argc > 1 && strcmp(argv[1], "crash") == 0) { volatile int *p = NULL; *p = 1; }
    return 3;
}
