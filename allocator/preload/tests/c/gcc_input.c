/* Compiled by gcc in tests/real_programs.rs, with and without LD_PRELOAD=libheaplens.so; the
 * two binaries must print the same. Enough code that cc1 allocates a fair amount at -O2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    char key[24];
    unsigned value;
    struct entry *next;
};

enum { BUCKETS = 257 };
static struct entry *table[BUCKETS];

static unsigned hash(const char *s) {
    unsigned h = 2166136261u;
    while (*s) h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

static void put(const char *key, unsigned value) {
    unsigned b = hash(key) % BUCKETS;
    for (struct entry *e = table[b]; e; e = e->next)
        if (strcmp(e->key, key) == 0) {
            e->value += value;
            return;
        }
    struct entry *e = calloc(1, sizeof *e);
    if (!e) exit(1);
    snprintf(e->key, sizeof e->key, "%s", key);
    e->value = value;
    e->next = table[b];
    table[b] = e;
}

static int by_value(const void *a, const void *b) {
    const struct entry *x = *(const struct entry *const *)a, *y = *(const struct entry *const *)b;
    if (x->value != y->value) return x->value < y->value ? 1 : -1;
    return strcmp(x->key, y->key);
}

static int is_prime(unsigned n) {
    if (n < 2) return 0;
    for (unsigned d = 2; d * d <= n; d++)
        if (n % d == 0) return 0;
    return 1;
}

#define SQUARE(x) ((x) * (x))
static inline uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

int main(void) {
    unsigned primes = 0, last = 0;
    for (unsigned n = 0; n < 20000; n++)
        if (is_prime(n)) {
            primes++;
            last = n;
        }
    printf("primes below 20000: %u, largest %u\n", primes, last);

    char word[16];
    uint64_t state = 42;
    for (int i = 0; i < 5000; i++) {
        state = mix(state + (uint64_t)i);
        snprintf(word, sizeof word, "w%u", (unsigned)(state % 300));
        put(word, (unsigned)(SQUARE(state % 7)));
    }
    struct entry *all[BUCKETS * 4];
    size_t n = 0;
    for (int b = 0; b < BUCKETS; b++)
        for (struct entry *e = table[b]; e && n < sizeof all / sizeof all[0]; e = e->next) all[n++] = e;
    qsort(all, n, sizeof all[0], by_value);
    printf("distinct words: %zu\n", n);
    for (size_t i = 0; i < 5 && i < n; i++) printf("%s %u\n", all[i]->key, all[i]->value);
    for (size_t i = 0; i < n; i++) free(all[i]);
    return 0;
}
