/* libheaplens.so loaded with dlopen (argv[1]) rather than at startup: the thread's heap pointer
 * uses the initial-exec TLS model, so the library must find room in the static TLS block or fail
 * to load with a message; either way no thread may see another's heap. Threads started before
 * and after the load allocate, check and free through hl_malloc/hl_free. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);
static malloc_fn hl_malloc_p;
static free_fn hl_free_p;
static pthread_barrier_t loaded;

static int churn(uintptr_t tag) {
  void *live[64] = {0};
  for (int i = 0; i < 200000; i++) {
    int k = i % 64;
    if (live[k]) {
      uintptr_t seen;
      memcpy(&seen, live[k], sizeof seen);
      if (seen != tag) return 1;
      hl_free_p(live[k]);
    }
    live[k] = hl_malloc_p(16 + (size_t)(i % 300));
    if (!live[k]) return 1;
    memcpy(live[k], &tag, sizeof tag);
  }
  for (int k = 0; k < 64; k++) hl_free_p(live[k]);
  return 0;
}

/* Started before the library is loaded; allocates once it is. */
static void *early(void *arg) {
  pthread_barrier_wait(&loaded);
  return (void *)(uintptr_t)churn((uintptr_t)arg);
}

static void *late(void *arg) { return (void *)(uintptr_t)churn((uintptr_t)arg); }

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  pthread_t t[6];
  pthread_barrier_init(&loaded, NULL, 4);
  for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, early, (void *)(uintptr_t)(i + 1));
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    printf("dlopen failed: %s\n", dlerror());
    return 1;
  }
  hl_malloc_p = (malloc_fn)dlsym(lib, "hl_malloc");
  hl_free_p = (free_fn)dlsym(lib, "hl_free");
  if (!hl_malloc_p || !hl_free_p) return 3;
  pthread_barrier_wait(&loaded);
  for (int i = 3; i < 6; i++) pthread_create(&t[i], NULL, late, (void *)(uintptr_t)(i + 1));
  int failed = churn(100);
  for (int i = 0; i < 6; i++) {
    void *r;
    pthread_join(t[i], &r);
    failed |= (int)(uintptr_t)r;
  }
  printf(failed ? "blocks mixed up\n" : "ok\n");
  return failed;
}
