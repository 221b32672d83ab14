/* Two runs of one program to compare with `heaplens diff`: the same work each time, and with
 * the argument "leak" an extra leak of known size. Phases are marked (when libheaplens.so is
 * preloaded): "setup done" after the cache is built, "work done" at the end.
 *   keep_cache:  50 blocks of 200 B, kept to the end (live at exit in both runs)
 *   churn:       2000 blocks of 24..88 B, each freed at once
 *   extra_leak:  with "leak", 37 blocks of 333 B never freed (12321 B) */
#include <stdlib.h>
#include <string.h>

extern void hl_mark(const char *label) __attribute__((weak));

#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

static void *cache[50];

__attribute__((noinline)) void keep_cache(void) {
    for (int i = 0; i < 50; i++) { cache[i] = malloc(200); KEEP(cache[i]); }
}

__attribute__((noinline)) void churn(void) {
    for (int i = 0; i < 2000; i++) { void *p = malloc(24 + (i % 5) * 16); KEEP(p); free(p); }
}

__attribute__((noinline)) void extra_leak(void) {
    for (int i = 0; i < 37; i++) { void *p = malloc(333); KEEP(p); }
}

int main(int argc, char **argv) {
    keep_cache();
    if (hl_mark) hl_mark("setup done");
    churn();
    if (argc > 1 && strcmp(argv[1], "leak") == 0) extra_leak();
    if (hl_mark) hl_mark("work done");
    return 0;
}
