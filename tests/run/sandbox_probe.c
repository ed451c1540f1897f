/* Syscall probe for tests/run/test_sandbox_hardening.py, built with gcc -static into a test root.
 * Each argument names one probe; the output is one line "name=errno" per probe (0: the call succeeded), or
 * "euid=N" for the probe "euid".
 * Every probe runs in a child of its own; "x32" and "int80" (a foreign syscall ABI) in a grandchild, and print
 * the signal that ended it instead. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long foreign_abi(const char *which) {
    pid_t pid = fork();
    if (pid == 0) {
        long e = ENOSYS;
#if defined(__x86_64__)
        if (strcmp(which, "x32") == 0)
            e = syscall(0x40000000 | SYS_getpid) < 0 ? errno : 0;
        else {
            long nr = 20; /* getpid on i386 */
            __asm__ volatile("int $0x80" : "+a"(nr) : : "memory");
            e = nr < 0 ? -nr : 0;
        }
#endif
        _exit((int)e);
    }
    int status;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
}

static void *idle(void *arg) { return arg; }

static long probe(const char *name) {
    errno = 0;
    long r;
    if (strcmp(name, "getpid") == 0)
        r = syscall(SYS_getpid);
    else if (strcmp(name, "thread") == 0) { /* glibc tries clone3 first and falls back to clone on ENOSYS */
        pthread_t t;
        int e = pthread_create(&t, NULL, idle, NULL);
        if (e == 0)
            e = pthread_join(t, NULL);
        return e;
    } else if (strcmp(name, "keyctl") == 0)
        r = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1);
    else if (strcmp(name, "add_key") == 0)
        r = syscall(SYS_add_key, "user", "snapfs-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    else if (strcmp(name, "userfaultfd") == 0)
        r = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    else if (strcmp(name, "perf_event_open") == 0) {
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.size = sizeof attr;
        attr.type = PERF_TYPE_SOFTWARE;
        attr.config = PERF_COUNT_SW_TASK_CLOCK;
        attr.exclude_kernel = 1;
        attr.exclude_hv = 1;
        r = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    } else if (strcmp(name, "io_uring_setup") == 0) {
        char params[120];
        memset(params, 0, sizeof params);
        r = syscall(SYS_io_uring_setup, 1, params);
    } else if (strcmp(name, "name_to_handle_at") == 0) {
        struct { unsigned int bytes; int type; unsigned char h[128]; } fh = {128, 0, {0}};
        int mount_id;
        r = syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &fh, &mount_id, 0);
    } else if (strcmp(name, "unshare_user") == 0)
        r = unshare(CLONE_NEWUSER);
    else if (strcmp(name, "unshare_fs") == 0)
        r = unshare(CLONE_FS);
    else if (strcmp(name, "clone_user") == 0) {
        r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0)
            _exit(0);
        if (r > 0)
            waitpid(r, NULL, 0);
    } else if (strcmp(name, "clone3") == 0)
        r = syscall(SYS_clone3, NULL, 0);
    else if (strcmp(name, "personality_rx") == 0)
        r = personality(READ_IMPLIES_EXEC);
    else if (strcmp(name, "personality_query") == 0)
        r = personality(0xffffffff);
    else if (strcmp(name, "raw_socket") == 0)
        r = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    else if (strcmp(name, "packet_socket") == 0)
        r = socket(AF_PACKET, SOCK_RAW, htons(0x0003));
    else if (strcmp(name, "x32") == 0 || strcmp(name, "int80") == 0)
        return foreign_abi(name);
    else {
        fprintf(stderr, "unknown probe %s\n", name);
        exit(2);
    }
    return r < 0 ? errno : 0;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        /* Each probe in its own child, so one (a new user namespace, say) cannot change the next. */
        fflush(stdout);
        if (strcmp(argv[i], "euid") == 0) {
            printf("euid=%d\n", (int)geteuid());
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            long e = probe(argv[i]);
            if (e < 0)
                printf("%s=signal %ld\n", argv[i], -e);
            else
                printf("%s=%s\n", argv[i], e ? strerrorname_np((int)e) : "0");
            fflush(stdout);
            _exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status))
            printf("%s=killed by signal %d\n", argv[i], WTERMSIG(status));
    }
    return 0;
}
