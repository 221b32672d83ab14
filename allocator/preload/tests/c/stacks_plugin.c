/* A library that stacks.c loads with dlopen: its allocations' frames must resolve. */
#include <stdlib.h>

__attribute__((noinline)) void *plugin_alloc(size_t n) {
    char *p = malloc(n);
    if (p) p[0] = 3;
    return p;
}
