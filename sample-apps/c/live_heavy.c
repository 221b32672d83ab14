/* A program for watching live (`heaplens run`, benches/live_frames): it fills a table of a
 * million small blocks (16-256 B), then replaces random ones (a free and a malloc each) at a
 * steady rate for a while, and frees everything. Arguments: live blocks (default 1000000),
 * seconds of churn (default 5), events per second of churn (default 4000000; 0: as fast as it
 * can). Marks its phases with hl_mark when heaplens is preloaded; prints a checksum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern void hl_mark(const char *label) __attribute__((weak));
static void mark(const char *label) { if (hl_mark) hl_mark(label); }

static uint64_t next(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t size_of(uint64_t r) { return 16 + r % 241; }

int main(int argc, char **argv) {
    long live = argc > 1 ? atol(argv[1]) : 1000000;
    double seconds = argc > 2 ? atof(argv[2]) : 5.0;
    double rate = argc > 3 ? atof(argv[3]) : 4e6;
    if (live <= 0 || seconds < 0 || rate < 0) {
        fprintf(stderr, "usage: %s [live blocks] [seconds] [events per second, 0: unpaced]\n", argv[0]);
        return 2;
    }
    unsigned char **slots = calloc((size_t)live, sizeof *slots);
    if (!slots) { perror("calloc"); return 1; }
    uint64_t s = 0x9E3779B97F4A7C15ull, sum = 0;
    mark("fill");
    for (long i = 0; i < live; i++) {
        slots[i] = malloc(size_of(next(&s)));
        if (!slots[i]) { perror("malloc"); return 1; }
        slots[i][0] = (unsigned char)i;
    }
    mark("churn");
    double start = now();
    long steps = 0;
    for (;;) {
        /* 4096 replacements (8192 events), then check the clock and the pace. */
        for (int j = 0; j < 4096; j++) {
            uint64_t k = next(&s) % (uint64_t)live;
            sum += slots[k][0];
            free(slots[k]);
            slots[k] = malloc(size_of(next(&s)));
            if (!slots[k]) { perror("malloc"); return 1; }
            slots[k][0] = (unsigned char)k;
        }
        steps += 4096;
        double t = now() - start;
        if (t >= seconds) break;
        if (rate > 0) {
            double due = (double)steps * 2.0 / rate;
            if (due > t) {
                double wait = due - t;
                struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    mark("free all");
    for (long i = 0; i < live; i++) { sum += slots[i][0]; free(slots[i]); }
    free(slots);
    printf("%llu %ld\n", (unsigned long long)sum, steps);
    return 0;
}
