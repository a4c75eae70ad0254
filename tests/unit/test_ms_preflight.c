/* dispatcher: ms_listen_taken(), the check that keeps a master off an address another process
 * listens on (SO_REUSEPORT would let both bind). Loopback, ephemeral ports. */
#include "master/ms_preflight.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/unit.h"

static int listener(int v6, struct sockaddr_storage *ss, socklen_t *len)
{
    int one = 1, fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memset(ss, 0, sizeof(*ss));
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        *len = sizeof(*a);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof(*a);
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (fd == -1 || bind(fd, (struct sockaddr *)ss, *len) != 0 || listen(fd, 8) != 0 ||
        getsockname(fd, (struct sockaddr *)ss, len) != 0) {
        if (fd != -1) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

/* A process that listens on a fresh loopback port and waits to be killed: a child of ours, or
 * (<orphan>) the child of a child that exited, so not ours. The address comes back in <ss>. */
static pid_t holder(int orphan, struct sockaddr_storage *ss, socklen_t *len)
{
    int p[2];
    pid_t pid, got = 0;

    if (pipe(p) != 0) {
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (orphan && fork() != 0) {
            _exit(0);
        }
        int fd = listener(0, ss, len);
        pid_t me = getpid();
        if (fd == -1 || write(p[1], &me, sizeof(me)) != sizeof(me) ||
            write(p[1], ss, sizeof(*ss)) != sizeof(*ss) ||
            write(p[1], len, sizeof(*len)) != sizeof(*len)) {
            _exit(1);
        }
        pause();
        _exit(0);
    }
    close(p[1]);
    if (pid > 0 && (read(p[0], &got, sizeof(got)) != sizeof(got) ||
                    read(p[0], ss, sizeof(*ss)) != sizeof(*ss) ||
                    read(p[0], len, sizeof(*len)) != sizeof(*len))) {
        got = -1;
    }
    close(p[0]);
    if (orphan && pid > 0) {
        waitpid(pid, NULL, 0);
    }
    return got;
}

static void test_own_and_children_free(void)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char why[256] = "";
    int fd;
    pid_t kid;

    /* A port nobody listens on. */
    fd = listener(0, &ss, &len);
    CU_ASSERT_FATAL(fd != -1);
    close(fd);
    CU_ASSERT_EQUAL(ms_listen_taken((struct sockaddr *)&ss, len, 0, NULL, why, sizeof(why)), 0);
    /* Our own listener (IPv4 and IPv6): kept over a reload, not a conflict. */
    for (int v6 = 0; v6 < 2; v6++) {
        fd = listener(v6, &ss, &len);
        CU_ASSERT_FATAL(fd != -1);
        CU_ASSERT_EQUAL(ms_listen_taken((struct sockaddr *)&ss, len, 0, NULL, why, sizeof(why)), 0);
        close(fd);
    }
    /* A child's (a worker holding the socket): ours too. */
    kid = holder(0, &ss, &len);
    CU_ASSERT_FATAL(kid > 0);
    CU_ASSERT_EQUAL(ms_listen_taken((struct sockaddr *)&ss, len, 0, NULL, why, sizeof(why)), 0);
    kill(kid, SIGKILL);
    waitpid(kid, NULL, 0);
}

static void test_other_process_named(void)
{
    struct sockaddr_storage ss, any;
    socklen_t len;
    char why[256] = "", want[64];
    pid_t other = holder(1, &ss, &len);

    CU_ASSERT_FATAL(other > 0);
    snprintf(want, sizeof(want), "pid %d (", (int)other);
    CU_ASSERT_EQUAL(ms_listen_taken((struct sockaddr *)&ss, len, 0, NULL, why, sizeof(why)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, want));
    /* The wildcard address of the same port overlaps it too. */
    any = ss;
    ((struct sockaddr_in *)&any)->sin_addr.s_addr = htonl(INADDR_ANY);
    why[0] = '\0';
    CU_ASSERT_EQUAL(ms_listen_taken((struct sockaddr *)&any, len, 0, NULL, why, sizeof(why)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, want));
    /* -t beside the master named by the pid file: its sockets are that config's own. */
    CU_ASSERT_EQUAL(ms_listen_taken((struct sockaddr *)&ss, len, other, NULL, why, sizeof(why)), 0);
    kill(other, SIGKILL);
}

UNIT_SUITE(ms_preflight, {"own and children's listeners are free", test_own_and_children_free},
           {"another process's listener is named", test_other_process_named})
