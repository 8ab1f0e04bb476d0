/*
 * /init of the riscv64 KVM test rig's host (tools/riscv-kvm-rig.sh packs it,
 * statically linked, into the initramfs of the emulated riscv64 host that
 * runs under qemu-system-riscv64 with the hypervisor extension).
 *
 * It sets up the few filesystems the tests need, tells the tests where the
 * guest files are (environment variables), runs the riscv_kvm integration
 * test binary, prints "EMBER-RIG-EXIT <status>" for the script on the other
 * side of the console, and powers the host off. Anything after "--" on the
 * host kernel's command line reaches this program as arguments and is
 * passed on to the test binary (a test-name filter, harness options).
 *
 * `ember_rig_aia=1` on the host's command line (tools/riscv-kvm-rig.sh
 * --aia: a 6.12 host whose KVM has the AIA device) exports EMBER_RIG_AIA=1
 * to the tests, and prints the host kernel's lines about KVM and its AIA
 * irqchips and /proc/interrupts before and after the tests.
 *
 * Every step says what it does on the console: a rig that fails must be
 * diagnosable from the log alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TEST_BIN "/rig/riscv_kvm"
#define BENCH_BIN "/rig/kvm_exits"
#define DISK_SRC "/rig/disk.ext4"
#define DISK_DST "/tmp/disk.ext4"

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("EMBER-RIG: ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

/* Ends the rig: the status line the host script looks for, then power
 * off (as PID 1, returning would panic the kernel instead). */
static void finish(int status) __attribute__((noreturn));
static void finish(int status) {
    printf("EMBER-RIG-EXIT %d\n", status);
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    say("reboot(RB_POWER_OFF) failed: %s", strerror(errno));
    for (;;) pause();
}

static int do_mount(const char *src, const char *dir, const char *type, const char *opts) {
    mkdir(dir, 0755);
    if (mount(src, dir, type, 0, opts) != 0 && errno != EBUSY) {
        say("error: mount %s on %s: %s", type, dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* Copies `from` to `to` (the initramfs files need not be writable; the
 * guests' disk must be). */
static int copy_file(const char *from, const char *to) {
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        say("error: open %s: %s", from, strerror(errno));
        return -1;
    }
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        say("error: create %s: %s", to, strerror(errno));
        close(in);
        return -1;
    }
    static char buf[1 << 16];
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0 || write(out, buf, (size_t)n) != n) {
            say("error: copy %s to %s: %s", from, to, strerror(errno));
            rc = -1;
            break;
        }
    }
    close(in);
    close(out);
    return rc;
}

/* Prints the lines of the kernel log that mention one of `words` (the
 * console has them too, among hundreds of others). */
static void print_kernel_log(const char *const *words) {
    /* 10 = SYSLOG_ACTION_SIZE_BUFFER, 3 = SYSLOG_ACTION_READ_ALL */
    int size = klogctl(10, NULL, 0);
    char *buf = size > 0 ? malloc((size_t)size + 1) : NULL;
    int n = buf ? klogctl(3, buf, size) : -1;
    if (n < 0) {
        say("error: reading the kernel log: %s", strerror(errno));
        free(buf);
        return;
    }
    buf[n] = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
        for (const char *const *w = words; *w; w++)
            if (strstr(line, *w)) {
                say("kernel: %s", line);
                break;
            }
    free(buf);
}

static void print_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        say("error: open %s: %s", path, strerror(errno));
        return;
    }
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        say("%s: %s", path, line);
    }
    fclose(f);
}

/* Asks the host's KVM for what an in-kernel AIA VMM uses: the
 * capabilities (on a VM fd, where riscv answers them) and the AIA device
 * itself, whose default config it prints (mode 2 = auto: guest
 * interrupt files in hardware where free, else emulated). Only prints:
 * the tests decide. The cross libc's <linux/kvm.h> is 6.1's, without
 * the AIA device; the numbers are 6.12's uapi. */
#define RIG_KVM_DEV_TYPE_RISCV_AIA 11
#define RIG_KVM_CAP_IRQ_ROUTING 25
#define RIG_KVM_CAP_IRQFD 32
#define RIG_KVM_CAP_SIGNAL_MSI 77
#define RIG_KVM_CAP_DEVICE_CTRL 89
static void probe_kvm_aia(void) {
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int vm = kvm >= 0 ? ioctl(kvm, KVM_CREATE_VM, 0) : -1;
    if (vm < 0) {
        say("error: /dev/kvm, KVM_CREATE_VM: %s", strerror(errno));
        if (kvm >= 0) close(kvm);
        return;
    }
    say("KVM caps on a VM: IRQCHIP %d, IRQ_ROUTING %d, IRQFD %d, SIGNAL_MSI %d, DEVICE_CTRL %d",
        ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP),
        ioctl(vm, KVM_CHECK_EXTENSION, RIG_KVM_CAP_IRQ_ROUTING),
        ioctl(vm, KVM_CHECK_EXTENSION, RIG_KVM_CAP_IRQFD),
        ioctl(vm, KVM_CHECK_EXTENSION, RIG_KVM_CAP_SIGNAL_MSI),
        ioctl(vm, KVM_CHECK_EXTENSION, RIG_KVM_CAP_DEVICE_CTRL));
    struct kvm_create_device dev = {.type = RIG_KVM_DEV_TYPE_RISCV_AIA};
    if (ioctl(vm, KVM_CREATE_DEVICE, &dev) != 0) {
        say("error: KVM_CREATE_DEVICE(KVM_DEV_TYPE_RISCV_AIA): %s", strerror(errno));
    } else {
        /* KVM_DEV_RISCV_AIA_GRP_CONFIG (0): MODE, IDS, SRCS, GROUP_BITS,
         * GROUP_SHIFT, HART_BITS, GUEST_BITS (0..6), u32 each. */
        static const char *const names[] = {"mode", "ids", "srcs", "group_bits", "group_shift",
                                            "hart_bits", "guest_bits"};
        char line[256];
        int len = snprintf(line, sizeof line, "KVM AIA device created; config:");
        for (unsigned i = 0; i < sizeof names / sizeof *names; i++) {
            __u32 value = 0;
            struct kvm_device_attr attr = {.group = 0, .attr = i, .addr = (__u64)(unsigned long)&value};
            if (ioctl((int)dev.fd, KVM_GET_DEVICE_ATTR, &attr) == 0)
                len += snprintf(line + len, sizeof line - (size_t)len, " %s %u", names[i], value);
            else
                len += snprintf(line + len, sizeof line - (size_t)len, " %s ?(%s)", names[i], strerror(errno));
        }
        say("%s", line);
        close((int)dev.fd);
    }
    close(vm);
    close(kvm);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    /* The kernel gave us /dev/console from its built-in initramfs; keep
     * printing there even if that failed (devtmpfs has it too). */
    do_mount("devtmpfs", "/dev", "devtmpfs", NULL);
    if (fcntl(1, F_GETFD) < 0) {
        int fd = open("/dev/console", O_RDWR);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2) close(fd);
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    say("init started");
    if (do_mount("proc", "/proc", "proc", NULL) != 0 || do_mount("sysfs", "/sys", "sysfs", NULL) != 0 ||
        do_mount("tmpfs", "/tmp", "tmpfs", "mode=1777") != 0)
        finish(125);

    struct utsname u;
    if (uname(&u) == 0) say("host kernel %s %s on %s", u.release, u.version, u.machine);
    say("%ld CPUs online", sysconf(_SC_NPROCESSORS_ONLN));
    struct stat st;
    if (stat("/dev/kvm", &st) == 0)
        say("/dev/kvm is there (char %u:%u)", major(st.st_rdev), minor(st.st_rdev));
    else
        say("/dev/kvm is missing: %s (the KVM tests will fail)", strerror(errno));

    /* The kernel hands `ember_rig_aia=1` from its command line to init as
     * an environment variable; the tests read EMBER_RIG_AIA. */
    const char *aia_param = getenv("ember_rig_aia");
    int aia = aia_param && strcmp(aia_param, "1") == 0;
    if (aia) {
        /* Evidence that this host's KVM has the AIA device, and how: "kvm
         * [1]: AIA available with N guest external interrupts" (N = 0:
         * every guest IMSIC emulated in software), plus the host's own
         * IMSIC and APLIC. /proc/interrupts: the "riscv-kvm" line counts
         * guest external interrupts that arrived for a vCPU not running. */
        static const char *const words[] = {"kvm", "AIA", "imsic", "aplic", "riscv-intc", NULL};
        print_kernel_log(words);
        print_file("/proc/interrupts");
        probe_kvm_aia();
        setenv("EMBER_RIG_AIA", "1", 1);
        say("EMBER_RIG_AIA=1 (the guest kernel is the 6.12 one)");
    }

    say("copying %s to %s (writable for the guests)", DISK_SRC, DISK_DST);
    if (copy_file(DISK_SRC, DISK_DST) != 0) finish(125);

    setenv("PATH", "/rig:/usr/bin:/bin", 1);
    setenv("HOME", "/tmp", 1);
    setenv("TMPDIR", "/tmp", 1);
    setenv("EMBER_BIN", "/rig/ember", 1);
    setenv("EMBER_RIG_KERNEL", "/rig/guest/Image", 1);
    setenv("EMBER_RIG_INITRD", "/rig/guest/initramfs.cpio.gz", 1);
    setenv("EMBER_RIG_TEST_INITRD", "/rig/guest/test.cpio.gz", 1);
    setenv("EMBER_RIG_DISK", DISK_DST, 1);
    setenv("EMBER_RIG_DISK_IN", "/rig/in.txt", 1);
    /* Panics in the tests show where they happened. */
    setenv("RUST_BACKTRACE", "1", 1);
    if (chdir("/tmp") != 0) say("chdir /tmp: %s", strerror(errno));

    /* The test binary's arguments: one test at a time (the host has two
     * harts and each VM wants them), its output shown as it comes (progress
     * and per-test times on the console during a long emulated run), then
     * whatever the command line gave after "--". */
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (!args) finish(125);
    int n = 0;
    /* `ember_rig_bench=1` on the host's command line (the kernel hands
     * such parameters to init as environment variables): run the KVM exit
     * benchmark (tools/riscv-kvm-rig.sh --bench) instead of the tests. */
    const char *bench = getenv("ember_rig_bench");
    int run_bench = bench && strcmp(bench, "1") == 0;
    const char *bin = run_bench ? BENCH_BIN : TEST_BIN;
    args[n++] = (char *)bin;
    if (!run_bench) {
        args[n++] = "--test-threads=1";
        args[n++] = "--nocapture";
    }
    for (int i = 1; i < argc; i++) args[n++] = argv[i];
    args[n] = NULL;
    printf("EMBER-RIG: running");
    for (int i = 0; i < n; i++) printf(" %s", args[i]);
    printf("\n");
    fflush(stdout);

    double t0 = now();
    pid_t pid = fork();
    if (pid < 0) {
        say("error: fork: %s", strerror(errno));
        finish(125);
    }
    if (pid == 0) {
        execv(bin, args);
        say("error: exec %s: %s", bin, strerror(errno));
        _exit(127);
    }
    int status = 0;
    /* As PID 1 we also reap orphans (a VM a failed test left behind):
     * wait until the test binary itself ends. */
    for (;;) {
        pid_t got = waitpid(-1, &status, 0);
        if (got == pid) break;
        if (got < 0 && errno != EINTR) {
            say("error: waitpid: %s", strerror(errno));
            finish(125);
        }
    }
    int code;
    if (WIFEXITED(status)) {
        code = WEXITSTATUS(status);
        say("%s exited with status %d after %.1f s", bin, code, now() - t0);
    } else {
        code = 128 + WTERMSIG(status);
        say("%s was killed by signal %d after %.1f s", bin, WTERMSIG(status), now() - t0);
    }
    if (aia) print_file("/proc/interrupts");
    finish(code);
}
