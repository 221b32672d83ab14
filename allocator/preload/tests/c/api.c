/* The prefixed C API (heaplens.h), linked with -lheaplens, no LD_PRELOAD.
 *
 * stdout: "hl_malloc from: <library>", "ok <section>" (or "FAILED <section>") per section,
 * "done". The last section calls hl_stats_print(), whose summary goes to stderr.
 * Exit status: 0 when every check held.
 */
#define _GNU_SOURCE
#include "heaplens.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);                       \
            fprintf(stderr, "FAIL %s:%d: %s (errno %d)\n", __FILE__, __LINE__, #cond, \
                    errno);                                                           \
        }                                                                             \
    } while (0)

/* Keeps the compiler from using heaplens.h's alloc_align/alloc_size attributes to fold checks. */
static uintptr_t addr(const void *p) {
    uintptr_t v = (uintptr_t)p;
    __asm__ volatile("" : "+r"(v));
    return v;
}
static size_t opaque(size_t x) {
    __asm__ volatile("" : "+r"(x));
    return x;
}
static void *same(void *p) {
    __asm__ volatile("" : "+r"(p));
    return p;
}

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(i * 7u + seed);
}
static int has_fill(const void *p, size_t n, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(i * 7u + seed)) return 0;
    return 1;
}

static const char *library_of(void *fn) {
    Dl_info info;
    if (!dladdr(fn, &info) || !info.dli_fname) return "unknown";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

static void section_hl_malloc(void) {
    enum { N = 32 };
    void *zero[N];
    for (int i = 0; i < N; i++) {
        zero[i] = hl_malloc(opaque(0));
        CHECK(zero[i] != NULL);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) CHECK(zero[i] != zero[j]);
    for (int i = 0; i < N; i++) hl_free(zero[i]);

    for (size_t n = 1; n <= 4096; n++) {
        void *p = hl_malloc(n);
        CHECK(p != NULL);
        if (!p) continue;
        size_t usable = hl_usable_size(p);
        /* a heaplens size class: enough, 16-aligned, and not wildly more than asked */
        CHECK(usable >= n && usable % 16 == 0 && usable <= n + n / 4 + 16);
        CHECK(addr(p) % 16 == 0);
        memset(p, 0x77, usable);
        hl_free(p);
    }
    /* heaplens's own size classes: exact per 16 bytes up to 64 (glibc would say 24 for 1) */
    static const size_t ask[] = {1, 16, 17, 33, 48, 64};
    static const size_t want[] = {16, 16, 32, 48, 48, 64};
    for (size_t i = 0; i < sizeof ask / sizeof ask[0]; i++) {
        void *p = hl_malloc(ask[i]);
        CHECK(hl_usable_size(p) == want[i]);
        hl_free(p);
    }
    CHECK(hl_usable_size(NULL) == 0);
    hl_free(NULL);
    void *big = hl_malloc((size_t)10 << 20);
    CHECK(big != NULL && hl_usable_size(big) >= (size_t)10 << 20);
    hl_free(big);

    errno = 0;
    CHECK(hl_malloc(opaque(SIZE_MAX)) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(hl_malloc(opaque((size_t)1 << 62)) == NULL && errno == ENOMEM);
}

static void section_hl_calloc(void) {
    static const size_t sizes[] = {8, 100, 3000, 70000, (size_t)2 << 20};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        enum { N = 8 };
        void *ps[N];
        for (int i = 0; i < N; i++) {
            ps[i] = hl_malloc(sizes[s]);
            if (ps[i]) memset(ps[i], 0xee, hl_usable_size(ps[i]));
        }
        for (int i = 0; i < N; i++) hl_free(ps[i]);
        for (int i = 0; i < N; i++) {
            unsigned char *z = hl_calloc(sizes[s] / 4, 4);
            CHECK(z != NULL);
            if (!z) continue;
            for (size_t k = 0; k < sizes[s]; k++)
                if (z[k] != 0) {
                    CHECK(z[k] == 0);
                    break;
                }
            ps[i] = z;
        }
        for (int i = 0; i < N; i++) hl_free(ps[i]);
    }
    void *z = hl_calloc(0, 0);
    CHECK(z != NULL);
    hl_free(z);
    errno = 0;
    CHECK(hl_calloc(opaque(SIZE_MAX / 2 + 1), 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(hl_calloc(opaque((size_t)1 << 32), opaque((size_t)1 << 32)) == NULL && errno == ENOMEM);
}

static void section_hl_realloc(void) {
    static const size_t steps[] = {5, 40, 700, 9000, 100000, (size_t)3 << 20, 1000, 20, 64000};
    char *p = hl_realloc(NULL, steps[0]);
    CHECK(p != NULL);
    if (!p) return;
    fill(p, steps[0], 0);
    size_t old = steps[0];
    for (size_t i = 1; i < sizeof steps / sizeof steps[0]; i++) {
        char *q = hl_realloc(p, steps[i]);
        CHECK(q != NULL);
        if (!q) break;
        CHECK(hl_usable_size(q) >= steps[i]);
        CHECK(has_fill(q, old < steps[i] ? old : steps[i], (unsigned)i - 1));
        fill(q, steps[i], (unsigned)i);
        p = q;
        old = steps[i];
    }
    /* failure: NULL, ENOMEM, the block untouched and still usable */
    errno = 0;
    CHECK(hl_realloc(same(p), opaque(SIZE_MAX)) == NULL && errno == ENOMEM);
    CHECK(has_fill(p, old, (unsigned)(sizeof steps / sizeof steps[0]) - 1));
    hl_free(p);
}

static void section_hl_malloc_aligned(void) {
    for (int shift = 0; shift <= 22; shift++) {
        size_t align = (size_t)1 << shift;
        const size_t sizes[] = {0, 1, align, align + 3};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            void *p = hl_malloc_aligned(sizes[i], align);
            CHECK(p != NULL && addr(p) % align == 0);
            if (!p) continue;
            CHECK(hl_usable_size(p) >= sizes[i]);
            if (sizes[i]) {
                memset(p, 0x3c, 1);
                memset((char *)p + sizes[i] - 1, 0x3c, 1);
            }
            hl_free(p);
        }
    }
    static const int huge_shifts[] = {24, 26};
    for (size_t i = 0; i < sizeof huge_shifts / sizeof huge_shifts[0]; i++) {
        size_t align = (size_t)1 << huge_shifts[i];
        void *p = hl_malloc_aligned(100, align);
        CHECK(p != NULL && addr(p) % align == 0);
        hl_free(p);
    }
    static const size_t bad[] = {0, 3, 24, 1000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        CHECK(hl_malloc_aligned(16, opaque(bad[i])) == NULL && errno == EINVAL);
    }
    errno = 0;
    CHECK(hl_malloc_aligned(opaque(SIZE_MAX), 64) == NULL && errno == ENOMEM);
}

/* Blocks from hl_malloc and plain malloc are interchangeable: linking libheaplens.so puts
 * its malloc ahead of glibc's. */
static void section_mixed(void) {
    void *a = malloc(100);
    CHECK(a != NULL && hl_usable_size(a) >= 100);
    hl_free(a);
    void *b = hl_malloc(100);
    free(b);
    void *c = hl_realloc(malloc(10), 5000);
    CHECK(c != NULL);
    free(c);
}

enum { THREADS = 4, PER_THREAD = 5000 };
static void *from_threads[THREADS][PER_THREAD];

static void *thread_alloc(void *arg) {
    unsigned id = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < PER_THREAD; i++) {
        size_t n = (size_t)(i % 300) + 1;
        from_threads[id][i] = hl_malloc(n);
        if (from_threads[id][i]) fill(from_threads[id][i], n, id + (unsigned)i);
    }
    return NULL;
}

static void section_threads(void) {
    pthread_t t[THREADS];
    for (unsigned i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, thread_alloc, (void *)(uintptr_t)i);
    for (unsigned i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (unsigned id = 0; id < THREADS; id++)
        for (int i = 0; i < PER_THREAD; i++) {
            CHECK(from_threads[id][i] != NULL);
            CHECK(has_fill(from_threads[id][i], (size_t)(i % 300) + 1, id + (unsigned)i));
            hl_free(from_threads[id][i]);
        }
}

static void section_stats(void) {
    /* something live to count */
    void *keep[100];
    for (int i = 0; i < 100; i++) keep[i] = hl_malloc((size_t)i * 100 + 1);
    /* markers link and are harmless without a recording (the recorded case: known_counts.c) */
    hl_mark(NULL);
    hl_mark("a marker with a label longer than sixteen bytes");
    fflush(stderr);
    hl_stats_print();
    for (int i = 0; i < 100; i++) hl_free(keep[i]);
}

struct section {
    const char *name;
    void (*run)(void);
};

int main(void) {
    void *(*volatile fn)(size_t) = hl_malloc;
    printf("hl_malloc from: %s\n", library_of((void *)fn));
    static const struct section sections[] = {
        {"hl_malloc", section_hl_malloc},
        {"hl_calloc", section_hl_calloc},
        {"hl_realloc", section_hl_realloc},
        {"hl_malloc_aligned", section_hl_malloc_aligned},
        {"mixed", section_mixed},
        {"threads", section_threads},
        {"hl_stats_print", section_stats},
    };
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
        int before = failures;
        sections[i].run();
        printf("%s %s\n", failures == before ? "ok" : "FAILED", sections[i].name);
        fflush(stdout);
    }
    printf("done\n");
    return failures == 0 ? 0 : 1;
}
