/* A long-running program to attach heaplens to (`heaplens attach PID`): it allocates 300 blocks
 * of 3000 bytes and prints "ready", then obeys one command per line on stdin:
 *   more   allocate 50 blocks of 5000 bytes (kept), print "more N" (N: blocks of 5000 held)
 *   exit   (or end of input) free everything, print "bye", exit 0
 * Its allocations are known, so a test can check what an attach sees: the 3000-byte blocks
 * through the attach's census, the 5000-byte ones as events. Run it with
 * LD_PRELOAD=libheaplens.so HEAPLENS_ATTACH=1 ./attach_target
 * With the argument "fork" it forks once the 300 blocks are made: the child (which inherits them)
 * prints "ready child PID" and obeys the commands; the parent waits and exits with its code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BEFORE 300
#define BATCH 50
#define MAX_BATCHES 20

int main(int argc, char **argv) {
    static void *early[BEFORE];
    static void *later[BATCH * MAX_BATCHES];
    int held = 0;
    for (int i = 0; i < BEFORE; i++) {
        early[i] = malloc(3000);
        memset(early[i], 1, 3000);
    }
    if (argc > 1 && strcmp(argv[1], "fork") == 0) {
        pid_t pid = fork();
        if (pid < 0) return 1;
        if (pid > 0) {
            int status = 0;
            waitpid(pid, &status, 0);
            return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        }
        printf("ready child %d\n", (int)getpid());
    } else {
        printf("ready\n");
    }
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "more", 4) == 0 && held + BATCH <= BATCH * MAX_BATCHES) {
            for (int i = 0; i < BATCH; i++) {
                later[held] = malloc(5000);
                memset(later[held], 2, 5000);
                held++;
            }
            printf("more %d\n", held);
            fflush(stdout);
        } else if (strncmp(line, "exit", 4) == 0) {
            break;
        }
    }
    for (int i = 0; i < held; i++) free(later[i]);
    for (int i = 0; i < BEFORE; i++) free(early[i]);
    printf("bye\n");
    fflush(stdout);
    return 0;
}
