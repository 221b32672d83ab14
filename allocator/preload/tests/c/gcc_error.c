/* Does not compile: gcc's diagnostics (and exit status 1) must be the same with and without
 * LD_PRELOAD=libheaplens.so. */
#include <stdio.h>

struct point {
    int x, y;
};

static int unused_function(int a) { return a * 2; }

int main(void) {
    struct point p = {1, 2};
    int unused_variable;
    printf("%d\n", p.z);
    undeclared_function(p);
    return "not an int";
}
