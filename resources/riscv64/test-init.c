/*
 * The init of Ember's device-test guests: riscv64 (built by
 * tools/riscv-test-guest.sh) and x86_64 (tools/x86-test-guest.sh, with the
 * host's gcc; the modules in /modules are loaded first). The kernel passes unknown command-line
 * parameters to init as environment variables; `ember_test=NAME` picks what
 * to do. Every test prints lines starting with "EMBER-TEST:" that the host
 * test parses, then "EMBER-TEST-DONE", then powers off. Failures print
 * "EMBER-TEST: error ..." and still power off, so the host never waits for a
 * timeout to learn about them.
 *
 *   blk      mount /dev/vda (ext4), print /mnt/in.txt, write /mnt/out.txt
 *            (content from `ember_data`), fsync, unmount; then try to write
 *            to /dev/vdb if present (expected to fail: read-only disk).
 *   blkbench sequential and 4 KiB random read/write on raw /dev/vda
 *            (`ember_mib` MiB), printing MiB/s and IOPS.
 *   rng      read 64 bytes from /dev/hwrng.
 *   hvc      write a line to /dev/hvc0, read a line back from it, echo it.
 *   net      configure eth0 as `ember_ip` (/24), send a UDP datagram to
 *            `ember_peer`:7777 and wait for the echo, then echo one datagram
 *            received on port 7778.
 *   powerkey wait for KEY_POWER (riscv64: the virtio-input power key;
 *            x86_64: the ACPI power button), then power off (the control
 *            API's power button).
 *   echo     read a line from ttyS0 and print it back.
 *   count    print an increasing counter every 10 ms (pause/resume tests).
 *   blksnap  write a pattern (from `ember_data`) to the first 4 KiB of raw
 *            /dev/vda with O_DIRECT|O_SYNC, print "blksnap written", wait
 *            for a line on ttyS0 (the host snapshots and restores
 *            meanwhile), read the block back with O_DIRECT and print it,
 *            then write and read back a second block (I/O after restore).
 *   netbench receive one TCP stream on port 7779 to EOF and report its
 *            rate (replying with the byte count), then echo UDP
 *            datagrams on 7780 until one says "done".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/input.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("EMBER-TEST: ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

static const char *env(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v ? v : dflt;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int test_blk(void) {
    mkdir("/mnt", 0755);
    if (mount("/dev/vda", "/mnt", "ext4", 0, NULL) != 0) {
        say("error mount /dev/vda: %s", strerror(errno));
        return 1;
    }
    char buf[4096];
    int fd = open("/mnt/in.txt", O_RDONLY);
    if (fd < 0) {
        say("error open in.txt: %s", strerror(errno));
    } else {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n < 0) n = 0;
        buf[n] = 0;
        while (n > 0 && buf[n - 1] == '\n') buf[--n] = 0;
        say("in=%s", buf);
    }
    const char *data = env("ember_data", "hello from the guest");
    fd = open("/mnt/out.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data) ||
        write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
        say("error write out.txt: %s", strerror(errno));
        return 1;
    }
    close(fd);
    /* Read it back through the page cache and say so. */
    fd = open("/mnt/out.txt", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0) close(fd);
    say("readback=%zd", n);
    sync();
    if (umount("/mnt") != 0) {
        say("error umount: %s", strerror(errno));
        return 1;
    }
    say("blk ok");
    /* A read-only second disk: reads work, writes fail. */
    fd = open("/dev/vdb", O_RDWR);
    if (fd < 0) {
        say("vdb open-rw=%s", strerror(errno));
        fd = open("/dev/vdb", O_RDONLY);
    }
    if (fd >= 0) {
        ssize_t r = pread(fd, buf, 512, 0);
        say("vdb read=%zd", r);
        memset(buf, 0xa5, 512);
        ssize_t w = pwrite(fd, buf, 512, 0);
        int werr = errno;
        int s = fsync(fd);
        say("vdb write=%zd errno=%s fsync=%d", w, w < 0 ? strerror(werr) : "none", s);
        close(fd);
    }
    return 0;
}

static int test_blkbench(void) {
    long mib = atol(env("ember_mib", "16"));
    size_t size = (size_t)mib << 20;
    int fd = open("/dev/vda", O_RDWR | O_DIRECT);
    if (fd < 0) {
        say("error open /dev/vda: %s", strerror(errno));
        return 1;
    }
    size_t chunk = 1 << 20;
    char *buf = aligned_alloc(4096, chunk);
    if (!buf) return 1;
    memset(buf, 0x5a, chunk);
    double t = now();
    for (size_t off = 0; off < size; off += chunk)
        if (pwrite(fd, buf, chunk, off) != (ssize_t)chunk) { say("error seq write"); return 1; }
    fsync(fd);
    say("seq_write_mibps=%.1f", mib / (now() - t));
    t = now();
    for (size_t off = 0; off < size; off += chunk)
        if (pread(fd, buf, chunk, off) != (ssize_t)chunk) { say("error seq read"); return 1; }
    say("seq_read_mibps=%.1f", mib / (now() - t));
    unsigned long blocks = size / 4096, ops = blocks < 4096 ? blocks : 4096;
    uint64_t x = 88172645463325252ull;
    t = now();
    for (unsigned long i = 0; i < ops; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (pwrite(fd, buf, 4096, (x % blocks) * 4096) != 4096) { say("error rand write"); return 1; }
    }
    fsync(fd);
    say("rand_write_iops=%.0f", ops / (now() - t));
    t = now();
    for (unsigned long i = 0; i < ops; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (pread(fd, buf, 4096, (x % blocks) * 4096) != 4096) { say("error rand read"); return 1; }
    }
    say("rand_read_iops=%.0f", ops / (now() - t));
    close(fd);
    return 0;
}

static int test_rng(void) {
    unsigned char b[64];
    int fd = open("/dev/hwrng", O_RDONLY);
    if (fd < 0) {
        say("error open /dev/hwrng: %s", strerror(errno));
        return 1;
    }
    ssize_t n = read(fd, b, sizeof b);
    close(fd);
    if (n <= 0) {
        say("error read hwrng: %s", n < 0 ? strerror(errno) : "eof");
        return 1;
    }
    char hex[129] = {0};
    for (ssize_t i = 0; i < n; i++) sprintf(hex + 2 * i, "%02x", b[i]);
    say("rng=%s", hex);
    fd = open("/sys/class/misc/hw_random/rng_current", O_RDONLY);
    if (fd >= 0) {
        char cur[64] = {0};
        ssize_t m = read(fd, cur, sizeof cur - 1);
        close(fd);
        if (m > 0 && cur[m - 1] == '\n') cur[m - 1] = 0;
        say("rng_current=%s", cur);
    }
    return 0;
}

static int test_hvc(void) {
    /* Which hvc is virtio-console depends on the kernel: with the SBI
     * console built in (riscv64), hvc0 is SBI's and virtio's is hvc1. */
    const char *name = env("ember_hvc", "hvc0");
    char path[64], hello[96];
    snprintf(path, sizeof path, "/dev/%s", name);
    int fd = open(path, O_RDWR | O_NOCTTY);
    if (fd < 0) {
        say("error open %s: %s", path, strerror(errno));
        return 1;
    }
    snprintf(hello, sizeof hello, "EMBER-HVC: hello on %s\n", name);
    if (write(fd, hello, strlen(hello)) < 0) say("error write hvc0: %s", strerror(errno));
    say("hvc wrote");
    char line[256];
    size_t len = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (len < sizeof line - 1) {
        if (poll(&p, 1, 20000) <= 0) { say("error hvc read timeout"); return 1; }
        ssize_t n = read(fd, line + len, 1);
        if (n <= 0) continue;
        if (line[len] == '\n' || line[len] == '\r') break;
        len++;
    }
    line[len] = 0;
    say("hvc got=%s", line);
    close(fd);
    return 0;
}

static int set_ip(const char *ifname, const char *ip) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    struct sockaddr_in *a = (struct sockaddr_in *)&ifr.ifr_addr;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a->sin_addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) != 0) { say("error SIOCSIFADDR: %s", strerror(errno)); return -1; }
    inet_pton(AF_INET, "255.255.255.0", &a->sin_addr);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) != 0) { say("error SIOCSIFNETMASK: %s", strerror(errno)); return -1; }
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) { say("error SIOCGIFFLAGS: %s", strerror(errno)); return -1; }
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) { say("error SIOCSIFFLAGS: %s", strerror(errno)); return -1; }
    if (ioctl(s, SIOCGIFHWADDR, &ifr) == 0) {
        unsigned char *m = (unsigned char *)ifr.ifr_hwaddr.sa_data;
        say("mac=%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
    }
    close(s);
    return 0;
}

static int udp_socket(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(port)};
    me.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&me, sizeof me) != 0) {
        say("error bind %d: %s", port, strerror(errno));
        return -1;
    }
    return s;
}

static int test_net(void) {
    if (set_ip("eth0", env("ember_ip", "10.0.2.15")) != 0) return 1;
    const char *peer = env("ember_peer", "10.0.2.1");
    say("net up");
    /* Guest to host: the host echoes on 7777. Retry: the first datagram can
     * be lost while ARP resolves. */
    int s = udp_socket(0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(7777)};
    inet_pton(AF_INET, peer, &to.sin_addr);
    char buf[2048];
    int got = 0;
    for (int attempt = 0; attempt < 20 && !got; attempt++) {
        const char *msg = "ember-guest-to-host";
        sendto(s, msg, strlen(msg), 0, (struct sockaddr *)&to, sizeof to);
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, 1000) > 0) {
            ssize_t n = recv(s, buf, sizeof buf - 1, 0);
            if (n > 0) { buf[n] = 0; say("echo=%s", buf); got = 1; }
        }
    }
    if (!got) say("error no echo from host");
    close(s);
    /* Host to guest: echo datagrams on 7778 until one says "done". */
    s = udp_socket(7778);
    say("listening 7778");
    for (;;) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, 30000) <= 0) { say("error no datagram from host"); return 1; }
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &fl);
        if (n <= 0) continue;
        buf[n] = 0;
        sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
        if (strcmp(buf, "done") == 0) break;
        say("host says=%s", buf);
    }
    close(s);
    return 0;
}

static int test_netbench(void) {
    if (set_ip("eth0", env("ember_ip", "10.0.2.15")) != 0) return 1;
    say("net up");
    /* Host to guest throughput: one TCP connection on 7779, read to EOF. */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(7779)};
    me.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(l, (struct sockaddr *)&me, sizeof me) != 0 || listen(l, 1) != 0) {
        say("error listen 7779: %s", strerror(errno));
        return 1;
    }
    say("listening 7779");
    int c = accept(l, NULL, NULL);
    if (c < 0) { say("error accept: %s", strerror(errno)); return 1; }
    static char buf[65536];
    long total = 0;
    double t0 = now();
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        total += n;
    }
    double dt = now() - t0;
    say("rx_bytes=%ld rx_mibps=%.1f", total, total / dt / 1048576.0);
    char msg[32];
    int m = snprintf(msg, sizeof msg, "%ld\n", total);
    if (write(c, msg, m) != m) say("error reply: %s", strerror(errno));
    close(c);
    close(l);
    /* Round trips: echo UDP datagrams on 7780 until "done". */
    int s = udp_socket(7780);
    say("listening 7780");
    for (;;) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, 30000) <= 0) break;
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n <= 0) continue;
        sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
        if (n == 4 && memcmp(buf, "done", 4) == 0) break;
    }
    close(s);
    return 0;
}

/* Prints an increasing counter every 10 ms, up to `ember_count_max`. */
static int test_count(void) {
    long max = atol(env("ember_count_max", "1000000"));
    for (long i = 0; i < max; i++) {
        say("count=%ld", i);
        struct timespec t = {0, 10 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    return 0;
}

/* Reads a line from fd (at most len - 1 bytes, without the newline). */
static int read_line(int fd, char *line, size_t len) {
    size_t n = 0;
    while (n < len - 1) {
        ssize_t r = read(fd, line + n, 1);
        if (r <= 0) return -1;
        if (line[n] == '\n' || line[n] == '\r') break;
        n++;
    }
    line[n] = 0;
    return (int)n;
}

/* One 4 KiB O_DIRECT block at `off`: the pattern `tag`:`data` repeated. */
static int blksnap_block(int fd, off_t off, const char *tag, const char *data, int write_it) {
    char *buf = aligned_alloc(4096, 4096), *want = malloc(4096);
    if (!buf || !want) return -1;
    size_t k = 0;
    while (k < 4096) {
        int m = snprintf(want + k, 4096 - k, "%s:%s;", tag, data);
        if (m <= 0) break;
        k += (size_t)m;
        if (k >= 4096) break;
    }
    if (write_it) {
        memcpy(buf, want, 4096);
        if (pwrite(fd, buf, 4096, off) != 4096) { say("error pwrite: %s", strerror(errno)); return -1; }
        return 0;
    }
    memset(buf, 0, 4096);
    if (pread(fd, buf, 4096, off) != 4096) { say("error pread: %s", strerror(errno)); return -1; }
    char head[64];
    snprintf(head, sizeof head, "%.40s", buf);
    say("blksnap %s read=%s match=%d", tag, head, memcmp(buf, want, 4096) == 0);
    free(buf);
    free(want);
    return 0;
}

static int test_blksnap(void) {
    const char *data = env("ember_data", "snapshot-pattern");
    int fd = open("/dev/vda", O_RDWR | O_DIRECT | O_SYNC);
    if (fd < 0) { say("error open /dev/vda: %s", strerror(errno)); return 1; }
    if (blksnap_block(fd, 0, "first", data, 1) != 0) return 1;
    int tty = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
    if (tty < 0) { say("error open /dev/ttyS0: %s", strerror(errno)); return 1; }
    say("blksnap written");
    char line[128];
    if (read_line(tty, line, sizeof line) < 0) { say("error read ttyS0"); return 1; }
    say("blksnap go=%s", line);
    if (blksnap_block(fd, 0, "first", data, 0) != 0) return 1;
    if (blksnap_block(fd, 4096, "second", data, 1) != 0) return 1;
    if (blksnap_block(fd, 4096, "second", data, 0) != 0) return 1;
    close(tty);
    close(fd);
    return 0;
}

/* Reads one line from the serial console and prints it back. */
static int test_echo(void) {
    int fd = open("/dev/ttyS0", O_RDWR | O_NOCTTY);
    if (fd < 0) {
        say("error open /dev/ttyS0: %s", strerror(errno));
        return 1;
    }
    say("ready for input");
    char line[256];
    size_t len = 0;
    while (len < sizeof line - 1) {
        ssize_t n = read(fd, line + len, 1);
        if (n <= 0) { say("error read: %s", n < 0 ? strerror(errno) : "eof"); return 1; }
        if (line[len] == '\n' || line[len] == '\r') break;
        len++;
    }
    line[len] = 0;
    say("echo-got=%s", line);
    close(fd);
    return 0;
}

/* Whether input device `fd` can report KEY_POWER. */
static int has_power_key(int fd) {
    unsigned char keys[KEY_MAX / 8 + 1];
    memset(keys, 0, sizeof keys);
    if (ioctl(fd, EVIOCGBIT(EV_KEY, sizeof keys), keys) < 0) return 0;
    return (keys[KEY_POWER / 8] >> (KEY_POWER % 8)) & 1;
}

/* Waits for the power key and powers off, as a distribution's logind or
 * acpid would. riscv64: the virtio-input power key; x86_64: the ACPI power
 * button (PNP0C0C, notified through the GED). Every event device that can
 * report KEY_POWER is watched (an AT keyboard can too), once at least one
 * has appeared (drivers may still be probing when init starts). */
#define MAX_INPUTS 16
static int test_powerkey(void) {
    struct pollfd fds[MAX_INPUTS];
    int n = 0;
    char names[512] = "";
    for (int tries = 0; tries < 50 && n == 0; tries++) {
        if (tries) { struct timespec t = {0, 100 * 1000 * 1000}; nanosleep(&t, NULL); }
        names[0] = 0;
        for (int i = 0; i < 32 && n < MAX_INPUTS; i++) {
            char path[32];
            snprintf(path, sizeof path, "/dev/input/event%d", i);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue;
            if (!has_power_key(fd)) { close(fd); continue; }
            char name[64] = "?";
            if (ioctl(fd, EVIOCGNAME(sizeof name - 1), name) < 0) strcpy(name, "?");
            size_t used = strlen(names);
            snprintf(names + used, sizeof names - used, "%s%s (%s)", used ? ", " : "", path, name);
            fds[n].fd = fd;
            fds[n].events = POLLIN;
            n++;
        }
    }
    if (n == 0) {
        say("error no /dev/input/event* reports KEY_POWER");
        return 1;
    }
    say("waiting for the power key on %s", names);
    for (;;) {
        if (poll(fds, n, -1) < 0) {
            if (errno == EINTR) continue;
            say("error poll: %s", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (!(fds[i].revents & POLLIN)) continue;
            struct input_event ev;
            if (read(fds[i].fd, &ev, sizeof ev) != (ssize_t)sizeof ev) {
                say("error reading an input event: %s", strerror(errno));
                return 1;
            }
            if (ev.type == EV_KEY && ev.code == KEY_POWER && ev.value == 1) {
                say("power key pressed");
                for (int j = 0; j < n; j++) close(fds[j].fd);
                return 0;
            }
        }
    }
}

/* Loads every module in /modules (an x86_64 initramfs carries the ones its
 * distribution kernel builds as modules: evdev, the ACPI button). They
 * depend on nothing but the kernel, so the order does not matter. */
static void load_modules(void) {
    static const char *const mods[] = {"evdev.ko", "button.ko"};
    for (size_t i = 0; i < sizeof mods / sizeof mods[0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/modules/%s", mods[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
            say("error loading %s: %s", path, strerror(errno));
        close(fd);
    }
}

int main(void) {
    mkdir("/dev", 0755);
    mkdir("/proc", 0755);
    mkdir("/sys", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    load_modules();
    const char *test = env("ember_test", "");
    say("start %s", test);
    int rc;
    if (strcmp(test, "blk") == 0) rc = test_blk();
    else if (strcmp(test, "blkbench") == 0) rc = test_blkbench();
    else if (strcmp(test, "rng") == 0) rc = test_rng();
    else if (strcmp(test, "hvc") == 0) rc = test_hvc();
    else if (strcmp(test, "net") == 0) rc = test_net();
    else if (strcmp(test, "netbench") == 0) rc = test_netbench();
    else if (strcmp(test, "count") == 0) rc = test_count();
    else if (strcmp(test, "echo") == 0) rc = test_echo();
    else if (strcmp(test, "powerkey") == 0) rc = test_powerkey();
    else if (strcmp(test, "blksnap") == 0) rc = test_blksnap();
    else { say("error unknown test '%s'", test); rc = 1; }
    printf("EMBER-TEST-DONE rc=%d\n", rc);
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
