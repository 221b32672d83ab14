/* Binary trees (the benchmarks game's allocation test): build many short-lived complete trees of
 * 32-byte nodes (two children and a payload) and one long-lived tree, count their nodes, free
 * them. Stresses the smallest size's malloc/free fast paths. */
#include "bench.h"

typedef struct node { struct node *left, *right; long depth; long pad; } node;

static node *make(int depth) {
  node *n = xmalloc(sizeof *n);
  n->depth = depth;
  if (depth > 0) {
    n->left = make(depth - 1);
    n->right = make(depth - 1);
  } else {
    n->left = n->right = NULL;
  }
  return n;
}

static long count(const node *n) {
  return n->left ? 1 + count(n->left) + count(n->right) : 1;
}

static void release(node *n) {
  if (n->left) {
    release(n->left);
    release(n->right);
  }
  free(n);
}

int main(int argc, char **argv) {
  double scale = bench_scale(argc, argv);
  int max_depth = 16;
  long total = 0;
  node *long_lived = make(max_depth);
  for (int d = 4; d <= max_depth; d += 2) {
    long iterations = scaled(1L << (max_depth - d + 5), scale);
    for (long i = 0; i < iterations; i++) {
      node *t = make(d);
      total += count(t);
      release(t);
    }
  }
  total += count(long_lived);
  release(long_lived);
  printf("check %ld\n", total);
  return 0;
}
