// heaplens.h from C++: the declarations must have C linkage (a mangled name would not link
// against libheaplens.so) and be noexcept. Prints "c++ ok" and exits 0.
#include "heaplens.h"

#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(noexcept(hl_malloc(1)), "heaplens.h functions are noexcept in C++");
static_assert(std::is_same<decltype(&hl_free), void (*)(void *) noexcept>::value,
              "hl_free keeps its C signature");

int main() {
    char *p = static_cast<char *>(hl_malloc(64));
    if (p == nullptr || hl_usable_size(p) < 64) return 1;
    std::memset(p, 1, 64);
    p = static_cast<char *>(hl_realloc(p, 4096));
    void *z = hl_calloc(10, 10);
    void *a = hl_malloc_aligned(100, 256);
    if (p == nullptr || z == nullptr || a == nullptr || reinterpret_cast<unsigned long>(a) % 256 != 0) return 1;
    hl_free(p);
    hl_free(z);
    hl_free(a);
    std::puts("c++ ok");
    return 0;
}
