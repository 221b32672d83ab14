/* A program that forks a child which does not exec, for `heaplens record --follow-fork`: the
 * parent allocates 300 blocks of 200 bytes and keeps them; the child inherits them, allocates 700
 * blocks of 520 bytes, frees 200 of them and 100 of the inherited blocks, and exits with 0; the
 * parent waits for it, frees its 300 blocks and exits with the child's code plus 5. Argument
 * "threads": a thread allocating 50 blocks of 64 bytes runs (and is joined) before the fork;
 * "busy": two threads allocate and free without pause while main forks (stopped after). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static atomic_int stop;

static void *busy(void *arg) {
    (void)arg;
    void *slots[64] = {0};
    for (unsigned i = 0; !atomic_load(&stop); i++) {
        free(slots[i % 64]);
        slots[i % 64] = malloc(16 + (i % 14) * 8); /* up to 120 bytes: not the classes checked */
    }
    for (int i = 0; i < 64; i++) free(slots[i]);
    return NULL;
}

static void *worker(void *arg) {
    void **out = arg;
    for (int i = 0; i < 50; i++) out[i] = malloc(64);
    return NULL;
}

int main(int argc, char **argv) {
    static void *inherited[300];
    static void *kept[50];
    for (int i = 0; i < 300; i++) { inherited[i] = malloc(200); memset(inherited[i], 1, 200); }
    if (argc > 1 && strcmp(argv[1], "threads") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, worker, kept);
        pthread_join(t, NULL);
    }
    pthread_t busy_threads[2];
    int busy_mode = argc > 1 && strcmp(argv[1], "busy") == 0;
    if (busy_mode)
        for (int i = 0; i < 2; i++) pthread_create(&busy_threads[i], NULL, busy, NULL);
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        static void *mine[700];
        for (int i = 0; i < 700; i++) { mine[i] = malloc(520); memset(mine[i], 2, 520); }
        for (int i = 0; i < 200; i++) free(mine[i]);
        for (int i = 0; i < 100; i++) free(inherited[i]);
        exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (busy_mode) {
        atomic_store(&stop, 1);
        for (int i = 0; i < 2; i++) pthread_join(busy_threads[i], NULL);
    }
    for (int i = 0; i < 300; i++) free(inherited[i]);
    return WIFEXITED(status) ? WEXITSTATUS(status) + 5 : 1;
}
