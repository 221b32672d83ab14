/* The C contracts of the malloc family, checked end to end.
 *
 * Run under LD_PRELOAD=libheaplens.so it checks heaplens; run plainly it checks glibc, which
 * proves the checks are fair. A few contracts are heaplens's own (glibc 2.36 rounds a
 * non-power-of-two alignment up instead of failing with EINVAL); they run only when malloc
 * comes from libheaplens.so.
 *
 * stdout: "allocator: <library that defines malloc>", then "ok <section>" (or
 * "FAILED <section>") per section, then "done". Failed checks are detailed on stderr.
 * Exit status: 0 when every check held.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;
static int is_heaplens;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);                       \
            fprintf(stderr, "FAIL %s:%d: %s (errno %d)\n", __FILE__, __LINE__, #cond, \
                    errno);                                                           \
        }                                                                             \
    } while (0)

/* The compiler must not reason about allocator results (alignment from alloc_align,
 * constant huge sizes): every value the checks depend on goes through these. */
static uintptr_t addr(const void *p) {
    uintptr_t v = (uintptr_t)p;
    __asm__ volatile("" : "+r"(v));
    return v;
}
static size_t opaque(size_t x) {
    __asm__ volatile("" : "+r"(x));
    return x;
}
/* `p` as a value the compiler cannot connect to `p`: passing it to a realloc that must fail
 * keeps -Wuse-after-free from flagging the later (legitimate) uses of `p`. */
static void *same(void *p) {
    __asm__ volatile("" : "+r"(p));
    return p;
}

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(i * 31u + seed);
}
static int has_fill(const void *p, size_t n, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(i * 31u + seed)) return 0;
    return 1;
}
static int all_bytes(const void *p, size_t n, unsigned char v) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != v) return 0;
    return 1;
}
/* Sparse versions of fill/has_fill for the many-block sections: all of a small block, the
 * first and last 2 KiB and every 251st byte of a big one. */
static int stamped(size_t i, size_t n) { return n <= 4096 || i < 2048 || i >= n - 2048 || i % 251 == 0; }
static void stamp(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i += stamped(i, n) ? 1 : 251 - i % 251)
        b[i] = (unsigned char)(i * 31u + seed);
}
static int has_stamp(const void *p, size_t n, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i += stamped(i, n) ? 1 : 251 - i % 251)
        if (b[i] != (unsigned char)(i * 31u + seed)) return 0;
    return 1;
}
/* Touches a block's first and last bytes (all of it when small) to prove it is writable. */
static void touch(void *p, size_t n) {
    if (n == 0) return;
    if (n <= (1u << 20)) {
        memset(p, 0x5a, n);
    } else {
        memset(p, 0x5a, 4096);
        memset((char *)p + n - 4096, 0x5a, 4096);
    }
}

static const char *allocator_name(void) {
    void *(*volatile fn)(size_t) = malloc;
    Dl_info info;
    if (!dladdr((void *)fn, &info) || !info.dli_fname) return "unknown";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

static const size_t HUGE_SIZES[] = {SIZE_MAX, SIZE_MAX - 15, SIZE_MAX / 2 + 1, (size_t)PTRDIFF_MAX,
                                    (size_t)1 << 62};
#define NHUGE (sizeof HUGE_SIZES / sizeof HUGE_SIZES[0])

static void section_malloc_zero(void) {
    enum { N = 64 };
    void *ps[N];
    for (int i = 0; i < N; i++) {
        ps[i] = malloc(opaque(0));
        CHECK(ps[i] != NULL);
        CHECK(addr(ps[i]) % 16 == 0);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) CHECK(ps[i] != ps[j]);
    for (int i = 0; i < N; i++) free(ps[i]);

    free(NULL);
    CHECK(malloc_usable_size(NULL) == 0);
    void *a = calloc(0, 0), *b = calloc(0, 8), *c = calloc(8, 0), *d = realloc(NULL, 0);
    CHECK(a && b && c && d);
    CHECK(a != b && a != c && a != d && b != c && b != d && c != d);
    free(a);
    free(b);
    free(c);
    free(d);
}

static void section_huge_sizes(void) {
    for (size_t i = 0; i < NHUGE; i++) {
        size_t n = opaque(HUGE_SIZES[i]);
        void *p;
        errno = 0;
        p = malloc(n);
        CHECK(p == NULL && errno == ENOMEM);
        errno = 0;
        p = calloc(1, n);
        CHECK(p == NULL && errno == ENOMEM);
        errno = 0;
        p = calloc(n, 1);
        CHECK(p == NULL && errno == ENOMEM);
        errno = 0;
        p = realloc(NULL, n);
        CHECK(p == NULL && errno == ENOMEM);
        errno = 0;
        p = aligned_alloc(64, n);
        CHECK(p == NULL && errno == ENOMEM);
        errno = 0;
        p = memalign(4096, n);
        CHECK(p == NULL && errno == ENOMEM);
        errno = 0;
        p = valloc(n);
        CHECK(p == NULL && errno == ENOMEM);
        errno = 0;
        p = pvalloc(n);
        CHECK(p == NULL && errno == ENOMEM);
        void *sentinel = (void *)0x1234, *q = sentinel;
        CHECK(posix_memalign(&q, 64, n) == ENOMEM);
        CHECK(q == sentinel);
    }
    /* count * size overflows */
    static const size_t pairs[][2] = {{SIZE_MAX / 2 + 1, 2},
                                      {(size_t)1 << 32, (size_t)1 << 32},
                                      {3, SIZE_MAX / 3 + 1},
                                      {SIZE_MAX, SIZE_MAX}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        errno = 0;
        void *p = calloc(opaque(pairs[i][0]), opaque(pairs[i][1]));
        CHECK(p == NULL && errno == ENOMEM);
        errno = 0;
        p = reallocarray(NULL, opaque(pairs[i][0]), opaque(pairs[i][1]));
        CHECK(p == NULL && errno == ENOMEM);
    }
    /* alignments no address space can honour */
    errno = 0;
    void *p = memalign(opaque((size_t)1 << 62), 16);
    CHECK(p == NULL && errno == ENOMEM);
    errno = 0;
    p = memalign(opaque((size_t)1 << 63), 16);
    CHECK(p == NULL && errno == ENOMEM);
}

static void section_failed_realloc(void) {
    static const size_t sizes[] = {100, 5000, 200000, (size_t)6 << 20};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        char *p = malloc(n);
        CHECK(p != NULL);
        if (!p) continue;
        fill(p, n, (unsigned)s);
        for (size_t i = 0; i < NHUGE; i++) {
            errno = 0;
            void *q = realloc(same(p), opaque(HUGE_SIZES[i]));
            CHECK(q == NULL && errno == ENOMEM);
        }
        errno = 0;
        void *q = reallocarray(same(p), opaque((size_t)1 << 33), opaque((size_t)1 << 33));
        CHECK(q == NULL && errno == ENOMEM);
        CHECK(malloc_usable_size(p) >= n);
        CHECK(has_fill(p, n, (unsigned)s));
        char *r = realloc(p, n * 2);
        CHECK(r != NULL);
        if (!r) {
            free(p);
            continue;
        }
        CHECK(has_fill(r, n, (unsigned)s));
        free(r);
    }
}

static void section_realloc_contents(void) {
    static const size_t steps[] = {1,     7,      16,      17,        100,       1000,      4096,
                                   10000, 70000,  300000,  (size_t)1 << 20, (size_t)5 << 20,
                                   (size_t)9 << 20, (size_t)3 << 20, 100000, 5000, 500,
                                   33,    3,      64,      (size_t)2 << 20, 48};
    char *p = realloc(NULL, steps[0]);
    CHECK(p != NULL);
    if (!p) return;
    size_t old = steps[0];
    fill(p, old, 0);
    for (size_t i = 1; i < sizeof steps / sizeof steps[0]; i++) {
        size_t n = steps[i];
        char *q = realloc(p, n);
        CHECK(q != NULL);
        if (!q) break;
        CHECK(addr(q) % 16 == 0);
        CHECK(malloc_usable_size(q) >= n);
        CHECK(has_fill(q, old < n ? old : n, (unsigned)(i - 1)));
        fill(q, n, (unsigned)i);
        p = q;
        old = n;
    }
    free(p);

    /* reallocarray, the non-overflowing path */
    int *a = reallocarray(NULL, 10, sizeof(int));
    CHECK(a != NULL);
    if (!a) return;
    for (int i = 0; i < 10; i++) a[i] = i * i;
    int *b = reallocarray(a, 100000, sizeof(int));
    CHECK(b != NULL);
    if (!b) {
        free(a);
        return;
    }
    for (int i = 0; i < 10; i++) CHECK(b[i] == i * i);
    free(b);
}

static void section_usable_size(void) {
    for (size_t n = 0; n <= 5000; n++) {
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        if (!p) continue;
        CHECK(addr(p) % 16 == 0);
        size_t usable = malloc_usable_size(p);
        CHECK(usable >= n);
        memset(p, 0xcd, usable); /* every usable byte is the program's to write */
        free(p);
    }
    static const size_t big[] = {(size_t)1 << 16, 100000, (size_t)1 << 20, (size_t)5 << 20,
                                 (size_t)64 << 20};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        void *p = malloc(big[i]);
        CHECK(p != NULL);
        if (!p) continue;
        CHECK(addr(p) % 16 == 0);
        CHECK(malloc_usable_size(p) >= big[i]);
        touch(p, malloc_usable_size(p));
        free(p);
    }
}

/* One aligned block from each function that takes an alignment. */
static void check_aligned(size_t align, size_t size) {
    enum { KINDS = 3 };
    void *ps[KINDS] = {NULL, NULL, NULL};
    ps[0] = aligned_alloc(align, size);
    ps[1] = memalign(align, size);
    if (align >= sizeof(void *)) {
        CHECK(posix_memalign(&ps[2], align, size) == 0);
    } else {
        ps[2] = memalign(align, size + 1);
    }
    for (int k = 0; k < KINDS; k++) {
        CHECK(ps[k] != NULL);
        if (!ps[k]) continue;
        if (addr(ps[k]) % align != 0) {
            fprintf(stderr, "kind %d: %p not aligned to %zu (size %zu)\n", k, ps[k], align, size);
        }
        CHECK(addr(ps[k]) % align == 0);
        CHECK(malloc_usable_size(ps[k]) >= size);
        touch(ps[k], size);
    }
    for (int k = 0; k < KINDS; k++) free(ps[k]);
}

static void section_alignments(void) {
    for (int shift = 0; shift <= 22; shift++) {
        size_t align = (size_t)1 << shift;
        const size_t sizes[] = {0, 1, 24, align, align + 1, align * 3 / 2 + 5};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) check_aligned(align, sizes[i]);
    }
    static const int huge_shifts[] = {23, 24, 26, 28};
    for (size_t i = 0; i < sizeof huge_shifts / sizeof huge_shifts[0]; i++) {
        size_t align = (size_t)1 << huge_shifts[i];
        check_aligned(align, 1);
        check_aligned(align, align + 1);
    }
    /* many live aligned blocks at once, so they cannot all be the same recycled block */
    enum { LIVE = 200 };
    void *live[LIVE];
    for (int i = 0; i < LIVE; i++) {
        size_t align = (size_t)1 << (4 + i % 10);
        live[i] = aligned_alloc(align, (size_t)(i * 13 + 1));
        CHECK(live[i] != NULL && addr(live[i]) % align == 0);
        if (live[i]) fill(live[i], (size_t)(i * 13 + 1), (unsigned)i);
    }
    for (int i = 0; i < LIVE; i++) {
        if (!live[i]) continue;
        CHECK(has_fill(live[i], (size_t)(i * 13 + 1), (unsigned)i));
        free(live[i]);
    }
}

static void section_page_aligned(void) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t sizes[] = {1, 100, page - 1, page, page + 1, 10 * page, (size_t)5 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *v = valloc(n);
        CHECK(v != NULL && addr(v) % page == 0);
        if (v) {
            CHECK(malloc_usable_size(v) >= n);
            touch(v, n);
        }
        void *pv = pvalloc(n);
        CHECK(pv != NULL && addr(pv) % page == 0);
        if (pv) {
            size_t rounded = (n + page - 1) / page * page;
            CHECK(malloc_usable_size(pv) >= rounded);
            touch(pv, rounded);
        }
        free(v);
        free(pv);
    }
    void *z = pvalloc(0);
    CHECK(z != NULL && addr(z) % page == 0);
    free(z);
}

static void section_bad_alignments(void) {
    static const size_t bad_posix[] = {0, 1, 2, 4, 3, 12, 24, 48, 1000, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad_posix / sizeof bad_posix[0]; i++) {
        void *sentinel = (void *)0x1234, *q = sentinel;
        CHECK(posix_memalign(&q, opaque(bad_posix[i]), 16) == EINVAL);
        CHECK(q == sentinel);
    }
    if (!is_heaplens) return; /* glibc 2.36 rounds these up instead */
    static const size_t bad[] = {0, 3, 12, 24, 48, 1000, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        void *p = aligned_alloc(opaque(bad[i]), 16);
        CHECK(p == NULL && errno == EINVAL);
        errno = 0;
        p = memalign(opaque(bad[i]), 16);
        CHECK(p == NULL && errno == EINVAL);
    }
    /* cfree is free (glibc no longer exports it to new programs) */
    void (*cfree_fn)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    CHECK(cfree_fn != NULL);
    if (cfree_fn) {
        cfree_fn(NULL);
        cfree_fn(malloc(10));
    }
}

static void section_calloc_zeroes(void) {
    static const size_t sizes[] = {8,     16,     24,     100,    512,          1000,
                                   4000,  16000,  60000,  200000, (size_t)1 << 20, (size_t)5 << 20};
    enum { MAXN = 64 };
    void *ps[MAXN];
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t size = sizes[s];
        int n = size > 100000 ? 4 : MAXN;
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < n; i++) {
                ps[i] = malloc(size);
                CHECK(ps[i] != NULL);
                if (!ps[i]) continue;
                if (round == 1 && size >= 65536) {
                    /* every third page only: what calloc finds next is resident here and there
                     * (an allocator may clear only the resident pages of a big block) */
                    unsigned char *b = ps[i];
                    for (size_t at = 0; at < malloc_usable_size(b); at += 3 * 4096) b[at] = 0xab;
                } else {
                    memset(ps[i], 0xab, malloc_usable_size(ps[i]));
                }
            }
            for (int i = 0; i < n; i++) free(ps[i]);
            for (int i = 0; i < n; i++) {
                /* alternate the count/size split (size is a multiple of 4) */
                ps[i] = (i & 1) ? calloc(size / 4, 4) : calloc(1, size);
                CHECK(ps[i] != NULL);
                if (ps[i]) CHECK(all_bytes(ps[i], size, 0));
            }
            for (int i = 0; i < n; i++) {
                if (ps[i]) memset(ps[i], 0xab, malloc_usable_size(ps[i]));
                free(ps[i]);
            }
        }
    }
    /* A program that closes every descriptor it did not open (as daemons do) and opens files
     * in their place: descriptors the allocator keeps (heaplens reads /proc/self/pagemap
     * through one) are gone or are other files now. Big zeroed blocks where written ones were
     * must still read as zero. */
    for (int fd = 3; fd < 1024; fd++) close(fd);
    int opened[256], nopened = 0;
    while (nopened < 256) {
        int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
        CHECK(fd >= 0);
        if (fd < 0) break;
        opened[nopened++] = fd;
    }
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 4; i++) {
            ps[i] = malloc(200000);
            CHECK(ps[i] != NULL);
            if (ps[i]) memset(ps[i], 0xab, 100000);
        }
        for (int i = 0; i < 4; i++) free(ps[i]);
        for (int i = 0; i < 4; i++) {
            ps[i] = calloc(1, 200000);
            CHECK(ps[i] != NULL);
            if (ps[i]) CHECK(all_bytes(ps[i], 200000, 0));
        }
        for (int i = 0; i < 4; i++) free(ps[i]);
    }
    for (int i = 0; i < nopened; i++) close(opened[i]);
}

/* --- cross-thread frees ------------------------------------------------------------------ */

enum { THREADS = 4, ROUNDS = 12, BATCH = 3000 };
struct block {
    unsigned char *p;
    size_t n;
    unsigned seed;
};
static struct block slots[THREADS][BATCH];
static pthread_barrier_t barrier;

static size_t pick_size(unsigned *state) {
    *state = *state * 1103515245u + 12345u;
    unsigned r = (*state >> 8) % 1000;
    if (r < 900) return 1 + r * 2;                   /* small */
    if (r < 990) return 2000 + (r - 900) * 700;      /* medium / large */
    return 300000 + (size_t)(r - 990) * 100000;      /* large / huge */
}

static void alloc_batch(struct block *batch, unsigned id, unsigned round) {
    unsigned state = id * 7919u + round * 104729u + 1;
    for (int k = 0; k < BATCH; k++) {
        size_t n = pick_size(&state);
        unsigned seed = id * 131u + round * 17u + (unsigned)k;
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        if (p) stamp(p, n, seed);
        batch[k] = (struct block){p, n, seed};
    }
}

static void verify_and_free(struct block *batch) {
    for (int k = 0; k < BATCH; k++) {
        if (!batch[k].p) continue;
        CHECK(has_stamp(batch[k].p, batch[k].n, batch[k].seed));
        free(batch[k].p);
        batch[k].p = NULL;
    }
}

static void *exchange_thread(void *arg) {
    unsigned id = (unsigned)(uintptr_t)arg;
    for (unsigned round = 0; round < ROUNDS; round++) {
        alloc_batch(slots[id], id, round);
        pthread_barrier_wait(&barrier);
        verify_and_free(slots[(id + 1) % THREADS]); /* another thread's blocks */
        pthread_barrier_wait(&barrier);
    }
    return NULL;
}

static void *alloc_and_exit_thread(void *arg) {
    unsigned id = (unsigned)(uintptr_t)arg;
    alloc_batch(slots[id], id, 1000 + id);
    return NULL; /* exits holding blocks: their pages are abandoned */
}

static void section_cross_thread(void) {
    pthread_t t[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (unsigned i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, exchange_thread, (void *)(uintptr_t)i);
    for (unsigned i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&barrier);

    /* threads that exit before their blocks are freed, then new threads in their place */
    for (int round = 0; round < 5; round++) {
        for (unsigned i = 0; i < THREADS; i++)
            pthread_create(&t[i], NULL, alloc_and_exit_thread, (void *)(uintptr_t)i);
        for (unsigned i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
        for (unsigned i = 0; i < THREADS; i++) verify_and_free(slots[i]);
    }
}

/* --- fork from a multithreaded program ---------------------------------------------------- */

static int stop_churn;

static void *churn_thread(void *arg) {
    unsigned state = (unsigned)(uintptr_t)arg + 1;
    enum { LIVE = 64 };
    struct block live[LIVE] = {{0}};
    while (!__atomic_load_n(&stop_churn, __ATOMIC_RELAXED)) {
        for (int i = 0; i < LIVE; i++) {
            if (live[i].p) {
                CHECK(has_stamp(live[i].p, live[i].n, live[i].seed));
                free(live[i].p);
            }
            size_t n = pick_size(&state) % 20000 + 1;
            live[i] = (struct block){malloc(n), n, state};
            CHECK(live[i].p != NULL);
            if (live[i].p) stamp(live[i].p, n, state);
        }
    }
    for (int i = 0; i < LIVE; i++) free(live[i].p);
    return NULL;
}

static void *child_thread(void *arg) {
    (void)arg;
    struct block b[BATCH / 10];
    unsigned state = 99;
    for (int k = 0; k < BATCH / 10; k++) {
        size_t n = pick_size(&state);
        b[k] = (struct block){malloc(n), n, (unsigned)k};
        if (!b[k].p) return (void *)1;
        stamp(b[k].p, n, (unsigned)k);
    }
    for (int k = 0; k < BATCH / 10; k++) {
        if (!has_stamp(b[k].p, b[k].n, b[k].seed)) return (void *)1;
        free(b[k].p);
    }
    return NULL;
}

/* In the child: allocate, check, free, in the forking thread and in a new one. */
static int child_work(void) {
    alarm(10); /* a deadlocked allocator kills the child (SIGALRM) instead of hanging the test */
    enum { CHILD_BLOCKS = 400 };
    int bad = 0;
    struct block b[CHILD_BLOCKS];
    unsigned state = 7;
    for (int k = 0; k < CHILD_BLOCKS; k++) {
        size_t n = pick_size(&state) % 50000 + 1;
        b[k] = (struct block){malloc(n), n, (unsigned)k};
        if (!b[k].p) return 1;
        stamp(b[k].p, n, (unsigned)k);
    }
    for (int k = 0; k < CHILD_BLOCKS; k += 2) {
        unsigned char *q = realloc(b[k].p, b[k].n * 2 + 1);
        if (!q) return 1;
        b[k].p = q;
    }
    for (int k = 0; k < CHILD_BLOCKS; k++) {
        bad |= !has_stamp(b[k].p, b[k].n, b[k].seed);
        free(b[k].p);
    }
    void *z = calloc(1000, 10);
    bad |= z == NULL || !all_bytes(z, 10000, 0);
    free(z);
    pthread_t t;
    void *ret = (void *)1;
    if (pthread_create(&t, NULL, child_thread, NULL) != 0) return 1;
    pthread_join(t, &ret);
    return bad || ret != NULL;
}

static void section_fork(void) {
    enum { CHURN = 2, FORKS = 30 };
    pthread_t t[CHURN];
    for (unsigned i = 0; i < CHURN; i++) pthread_create(&t[i], NULL, churn_thread, (void *)(uintptr_t)i);
    for (int i = 0; i < FORKS; i++) {
        fflush(NULL);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) exit(child_work());
        if (pid < 0) break;
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "fork %d: child status %#x (signal %d)\n", i, status,
                    WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        }
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    __atomic_store_n(&stop_churn, 1, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < CHURN; i++) pthread_join(t[i], NULL);
}

struct section {
    const char *name;
    void (*run)(void);
};

int main(void) {
    const char *name = allocator_name();
    is_heaplens = strstr(name, "heaplens") != NULL;
    printf("allocator: %s\n", name);
    static const struct section sections[] = {
        {"malloc0", section_malloc_zero},
        {"huge-sizes", section_huge_sizes},
        {"failed-realloc", section_failed_realloc},
        {"realloc-contents", section_realloc_contents},
        {"usable-size", section_usable_size},
        {"alignments", section_alignments},
        {"page-aligned", section_page_aligned},
        {"bad-alignments", section_bad_alignments},
        {"calloc-zeroes", section_calloc_zeroes},
        {"cross-thread", section_cross_thread},
        {"fork", section_fork},
    };
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
        int before = __atomic_load_n(&failures, __ATOMIC_RELAXED);
        sections[i].run();
        int after = __atomic_load_n(&failures, __ATOMIC_RELAXED);
        printf("%s %s\n", after == before ? "ok" : "FAILED", sections[i].name);
        fflush(stdout);
    }
    printf("done\n");
    return failures == 0 ? 0 : 1;
}
