/* Heap misuse for checked mode (HEAPLENS_CHECK=1). Usage: checked MODE
 *   ok           correct use only (writes every usable byte, frees across threads): exits 0
 *   double-free  frees a block twice
 *   free-stack   frees a pointer into a stack array
 *   free-global  frees a pointer into a global array
 *   overflow     writes one byte past the end of a block (at malloc_usable_size), then frees it
 * Before the misuse it prints "addr <pointer>" on stdout (flushed), the pointer the report must
 * name. If the misuse goes unnoticed it prints "survived" and exits 0.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* Hides where a pointer came from, so the compiler neither warns about nor folds the misuse. */
static void *launder(void *p) {
    __asm__ volatile("" : "+r"(p));
    return p;
}

static void announce(const void *p) {
    printf("addr %p\n", p);
    fflush(stdout);
}

static char global_array[256];

enum { BLOCKS = 2000 };
static void *blocks[BLOCKS];

static void *free_half(void *arg) {
    (void)arg;
    for (int i = 0; i < BLOCKS; i += 2) free(blocks[i]);
    return NULL;
}

static int correct_use(void) {
    for (int i = 0; i < BLOCKS; i++) {
        size_t n = (size_t)(i * 37 % 5000);
        blocks[i] = malloc(n);
        if (!blocks[i]) return 1;
        memset(blocks[i], 0x11, malloc_usable_size(blocks[i]));
    }
    pthread_t t;
    pthread_create(&t, NULL, free_half, NULL);
    pthread_join(t, NULL);
    for (int i = 1; i < BLOCKS; i += 2) {
        char *q = realloc(blocks[i], (size_t)i * 3 + 1);
        if (!q) return 1;
        memset(q, 0x22, malloc_usable_size(q));
        free(q);
    }
    void *a = aligned_alloc(4096, 100);
    void *z = calloc(100, 100);
    if (!a || !z) return 1;
    memset(a, 0x33, malloc_usable_size(a));
    memset(z, 0x44, malloc_usable_size(z));
    free(a);
    free(z);
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    /* the misuse cases abort: no core files */
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    const char *mode = argc > 1 ? argv[1] : "";

    if (strcmp(mode, "ok") == 0) return correct_use();

    if (strcmp(mode, "double-free") == 0) {
        void *p = malloc(40);
        memset(p, 1, 40);
        announce(p);
        free(p);
        free(launder(p));
    } else if (strcmp(mode, "free-stack") == 0) {
        char stack_array[64];
        memset(stack_array, 0, sizeof stack_array);
        void *p = launder(stack_array + 16);
        announce(p);
        free(p);
    } else if (strcmp(mode, "free-global") == 0) {
        void *p = launder(global_array + 32);
        announce(p);
        free(p);
    } else if (strcmp(mode, "overflow") == 0) {
        char *p = malloc(40);
        size_t usable = malloc_usable_size(p);
        memset(p, 1, usable);
        announce(p);
        p[usable] = 'x'; /* one byte past the end */
        free(p);
        /* give a checker that looks later a chance too */
        for (int i = 0; i < 100; i++) free(malloc(40));
    } else {
        fprintf(stderr, "unknown mode '%s'\n", mode);
        return 2;
    }
    printf("survived\n");
    return 0;
}
