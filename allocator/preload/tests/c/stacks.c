/* Known call paths for the stack capture test: alloc_a allocates 1001-byte blocks with malloc,
 * alloc_b 2002-byte blocks with calloc, alloc_c 3030 bytes with realloc(NULL, n), grow_c moves
 * them to 5050 bytes with realloc, and the aligned entry points allocate in alloc_aligned16
 * (aligned_alloc(16, 1616)), alloc_aligned (aligned_alloc(64, 4040)), alloc_posix
 * (posix_memalign, 128, 6060), alloc_memalign (memalign(4096, 7070)), alloc_valloc
 * (valloc(8080)) and alloc_pvalloc (pvalloc(12288)), all called from main. A
 * thread loads a library (stacks_plugin.c, named by argv[1]) with dlopen while the others
 * allocate. */
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) void *alloc_a(size_t n) {
    char *p = malloc(n);
    if (p) p[0] = 1; /* not a tail call: the return address lies in alloc_a */
    return p;
}

__attribute__((noinline)) void *alloc_b(size_t n) {
    char *p = calloc(1, n);
    if (p) p[1] = 2;
    return p;
}

__attribute__((noinline)) void *alloc_c(size_t n) {
    char *p = realloc(NULL, n);
    if (p) p[2] = 3;
    return p;
}

__attribute__((noinline)) void *grow_c(void *p, size_t n) {
    char *q = realloc(p, n); /* moves: far more than the block holds */
    if (q) q[3] = 4;
    return q;
}

__attribute__((noinline)) void *alloc_aligned16(size_t n) {
    char *p = aligned_alloc(16, n);
    if (p) p[0] = 5;
    return p;
}

__attribute__((noinline)) void *alloc_aligned(size_t n) {
    char *p = aligned_alloc(64, n);
    if (p) p[0] = 6;
    return p;
}

__attribute__((noinline)) void *alloc_posix(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 128, n) != 0) return NULL;
    ((char *)p)[0] = 7;
    return p;
}

__attribute__((noinline)) void *alloc_memalign(size_t n) {
    char *p = memalign(4096, n);
    if (p) p[0] = 8;
    return p;
}

__attribute__((noinline)) void *alloc_valloc(size_t n) {
    char *p = valloc(n);
    if (p) p[0] = 9;
    return p;
}

__attribute__((noinline)) void *alloc_pvalloc(size_t n) {
    char *p = pvalloc(n);
    if (p) p[0] = 10;
    return p;
}

static void *loader(void *path) {
    for (int i = 0; i < 20; i++) {
        void *h = dlopen(path, RTLD_NOW);
        if (!h) return (void *)1;
        void *(*f)(size_t) = (void *(*)(size_t))dlsym(h, "plugin_alloc");
        if (!f) return (void *)1;
        free(f(3003));
        dlclose(h);
    }
    return NULL;
}

static void *allocator(void *arg) {
    (void)arg;
    for (int i = 0; i < 20000; i++) free(alloc_a(1001));
    return NULL;
}

#define N 500
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    pthread_t t[3];
    pthread_create(&t[0], NULL, loader, argv[1]);
    pthread_create(&t[1], NULL, allocator, NULL);
    pthread_create(&t[2], NULL, allocator, NULL);
    static void *keep[2 * N];
    for (int i = 0; i < N; i++) {
        keep[2 * i] = alloc_a(1001);
        keep[2 * i + 1] = alloc_b(2002);
    }
    for (int i = 0; i < 2 * N; i++) free(keep[i]);
    for (int i = 0; i < N; i++) free(grow_c(alloc_c(3030), 5050));
    for (int i = 0; i < 100; i++) {
        free(alloc_aligned16(1616));
        free(alloc_aligned(4040));
        free(alloc_posix(6060));
        free(alloc_memalign(7070));
        free(alloc_valloc(8080));
        free(alloc_pvalloc(12288));
    }
    void *r = NULL;
    int failed = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], &r);
        failed |= r != NULL;
    }
    printf("%s\n", failed ? "dlopen failed" : "done");
    return failed;
}
