/*
 * This machine's latency floor for the benchmark's path shape, with no work on it: an emitter process
 * stamps a message on a timer and writes it to a relay process, which writes it on to a receiver; each
 * waits in epoll_wait, over loopback TCP, like simulator → Sluice → load generator. Prints the same
 * percentiles as the benchmark (milliseconds, emit stamp → receiver read, CLOCK_REALTIME).
 *
 * usage: floor MESSAGES_PER_SECOND SECONDS
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long realtime_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* A connected loopback TCP pair with Nagle off, as the benchmark's sockets have. */
static void tcp_pair(int fds[2]) {
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 1) ||
        getsockname(listener, (struct sockaddr *)&address, &length))
        die("listen");
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (fds[0] < 0 || connect(fds[0], (struct sockaddr *)&address, sizeof address)) die("connect");
    if ((fds[1] = accept(listener, NULL, NULL)) < 0) die("accept");
    close(listener);
    setsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fds[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Blocks in epoll_wait until `fd` is readable, then reads what is there. */
static ssize_t wait_and_read(int epoll, int fd, char *buffer, size_t size) {
    struct epoll_event event;
    while (epoll_wait(epoll, &event, 1, -1) < 1) {}
    return read(fd, buffer, size);
}

static int watch(int fd) {
    int epoll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    if (epoll < 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)) die("epoll");
    return epoll;
}

static int by_value(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MESSAGES_PER_SECOND SECONDS\n", argv[0]);
        return 2;
    }
    double rate = atof(argv[1]);
    int total = (int)(rate * atof(argv[2]));
    if (rate <= 0 || total <= 0) {
        fprintf(stderr, "rate and seconds must be positive\n");
        return 2;
    }
    int to_relay[2], to_receiver[2];
    tcp_pair(to_relay);
    tcp_pair(to_receiver);

    pid_t relay = fork();
    if (relay == 0) { /* relay */
        int epoll = watch(to_relay[1]);
        char buffer[4096];
        ssize_t count;
        while ((count = wait_and_read(epoll, to_relay[1], buffer, sizeof buffer)) > 0)
            if (write(to_receiver[0], buffer, (size_t)count) != count) die("relay write");
        _exit(0);
    }
    pid_t emitter = fork();
    if (emitter == 0) { /* emitter: one stamp every 1/rate seconds, on an absolute schedule */
        struct timespec next;
        long step = (long)(1e9 / rate);
        clock_gettime(CLOCK_MONOTONIC, &next);
        for (int i = 0; i < total; i++) {
            next.tv_nsec += step;
            while (next.tv_nsec >= 1000000000) next.tv_nsec -= 1000000000, next.tv_sec++;
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
            long long stamp = realtime_ns();
            if (write(to_relay[0], &stamp, sizeof stamp) != sizeof stamp) die("emit");
        }
        close(to_relay[0]);
        _exit(0);
    }

    long long *latency = malloc(sizeof *latency * (size_t)total);
    int received = 0, epoll = watch(to_receiver[1]);
    char buffer[65536];
    size_t held = 0;
    while (received < total) {
        ssize_t count = wait_and_read(epoll, to_receiver[1], buffer + held, sizeof buffer - held);
        if (count <= 0) break;
        long long now = realtime_ns();
        held += (size_t)count;
        size_t offset = 0;
        for (; offset + sizeof(long long) <= held && received < total; offset += sizeof(long long)) {
            long long stamp;
            memcpy(&stamp, buffer + offset, sizeof stamp);
            latency[received++] = now - stamp;
        }
        memmove(buffer, buffer + offset, held - offset);
        held -= offset;
    }
    /* The children hold copies of every socket (and of stdout): end them rather than wait for EOFs. */
    kill(relay, SIGTERM);
    kill(emitter, SIGTERM);
    waitpid(relay, NULL, 0);
    waitpid(emitter, NULL, 0);
    qsort(latency, (size_t)received, sizeof *latency, by_value);
#define AT(q) (latency[(int)((received - 1) * (q))] / 1e6)
    printf("{\"messages_per_second\": %.0f, \"count\": %d, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p99_9\": %.3f, \"max\": %.3f}\n",
           rate, received, AT(0.5), AT(0.9), AT(0.99), AT(0.999), AT(1.0));
    return received == total ? 0 : 1;
}
