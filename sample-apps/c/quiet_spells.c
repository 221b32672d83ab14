/* Bursts of allocations between quiet spells, for the recorder's own footprint: each burst
 * starts 20 ms after the last, when the collector has nothing to take and waits, so the
 * thread's sends find it waiting (three buffers a burst); the program's end comes after one
 * more spell. What it leaves live: 50 blocks of 200 B (keep), made after the last burst. */
#include <stdlib.h>
#include <unistd.h>

#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

static void *kept[50];

__attribute__((noinline)) void burst(void) {
    for (int i = 0; i < 3000; i++) { void *p = malloc(24 + (i % 5) * 16); KEEP(p); free(p); }
}

__attribute__((noinline)) void keep(void) {
    for (int i = 0; i < 50; i++) { kept[i] = malloc(200); KEEP(kept[i]); }
}

int main(void) {
    for (int round = 0; round < 3; round++) {
        usleep(20000);
        burst();
    }
    keep();
    usleep(20000);
    return 0;
}
