// Block benchmark run inside the guest (static, so it runs from the busybox initramfs):
//   blk-guest-bench DEVICE SECONDS
// runs four tests on DEVICE with O_DIRECT, each for SECONDS after a short warm-up, and prints
// one line per test: "blkbench NAME VALUE UNIT".
//   seqread / seqwrite   1 MiB requests, sequential, wrapping at the end of the device (MiB/s)
//   randread-qd1/-qd32   4 KiB reads at random 4 KiB-aligned offsets, with 1 / 32 requests in
//                        flight: one process per request slot, each issuing pread (IOPS)
// Needs no AIO or io_uring in the guest kernel (tinyconfig has neither).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SEQ_BLOCK (1u << 20)
#define RAND_BLOCK 4096u
#define WARMUP_NS 300000000ull
#define MAX_JOBS 64

struct shared {
  volatile int stop;
  volatile uint64_t done[MAX_JOBS]; // requests (or bytes) completed by each job
};

static void die(const char *what) { perror(what); exit(1); }

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
  struct timespec t = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };
  while (nanosleep(&t, &t) < 0 && errno == EINTR) {}
}

static uint64_t sum(struct shared *s, int jobs) {
  uint64_t n = 0;
  for (int i = 0; i < jobs; i++) n += __atomic_load_n(&s->done[i], __ATOMIC_RELAXED);
  return n;
}

static void job(const char *dev, struct shared *s, int slot, int mode, uint64_t size) {
  int fd = open(dev, (mode == 1 ? O_WRONLY : O_RDONLY) | O_DIRECT);
  if (fd < 0) die(dev);
  size_t block = mode == 2 ? RAND_BLOCK : SEQ_BLOCK;
  void *buf;
  if (posix_memalign(&buf, 4096, block)) die("posix_memalign");
  memset(buf, 0xa5, block);
  uint64_t blocks = size / block, x = 0x9e3779b97f4a7c15ull ^ ((uint64_t)(slot + 1) * 0xbf58476d1ce4e5b9ull);
  uint64_t pos = 0;
  while (!s->stop) {
    uint64_t off;
    if (mode == 2) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17; // xorshift64
      off = (x % blocks) * block;
    } else {
      off = pos * block;
      pos = (pos + 1) % blocks;
    }
    ssize_t n = mode == 1 ? pwrite(fd, buf, block, (off_t)off) : pread(fd, buf, block, (off_t)off);
    if (n != (ssize_t)block) die(mode == 1 ? "pwrite" : "pread");
    __atomic_store_n(&s->done[slot], s->done[slot] + 1, __ATOMIC_RELAXED);
  }
  if (mode == 1 && fdatasync(fd) < 0) die("fdatasync");
  exit(0);
}

// Runs `jobs` processes of `mode` (0 seq read, 1 seq write, 2 random read); returns requests/s.
static double measure(const char *dev, int mode, int jobs, uint64_t size, double seconds) {
  struct shared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s == MAP_FAILED) die("mmap");
  memset((void *)s, 0, sizeof *s);
  pid_t pids[MAX_JOBS];
  for (int i = 0; i < jobs; i++) {
    pids[i] = fork();
    if (pids[i] < 0) die("fork");
    if (pids[i] == 0) job(dev, s, i, mode, size);
  }
  sleep_ns(WARMUP_NS);
  uint64_t n0 = sum(s, jobs), t0 = now_ns();
  sleep_ns((uint64_t)(seconds * 1e9));
  uint64_t n1 = sum(s, jobs), t1 = now_ns();
  s->stop = 1;
  for (int i = 0; i < jobs; i++) {
    int status;
    if (waitpid(pids[i], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "blkbench: job %d failed\n", i);
      exit(1);
    }
  }
  munmap(s, sizeof *s);
  return (double)(n1 - n0) * 1e9 / (double)(t1 - t0);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: blk-guest-bench DEVICE SECONDS\n");
    return 2;
  }
  const char *dev = argv[1];
  double seconds = atof(argv[2]);
  int fd = open(dev, O_RDONLY);
  if (fd < 0) die(dev);
  off_t end = lseek(fd, 0, SEEK_END);
  if (end < (off_t)SEQ_BLOCK) { fprintf(stderr, "blkbench: %s is too small\n", dev); return 1; }
  close(fd);
  uint64_t size = (uint64_t)end;
  printf("blkbench size %llu bytes\n", (unsigned long long)size);
  fflush(stdout);
  printf("blkbench seqread %.1f MiB/s\n", measure(dev, 0, 1, size, seconds));
  fflush(stdout);
  printf("blkbench seqwrite %.1f MiB/s\n", measure(dev, 1, 1, size, seconds));
  fflush(stdout);
  printf("blkbench randread-qd1 %.0f IOPS\n", measure(dev, 2, 1, size, seconds));
  fflush(stdout);
  printf("blkbench randread-qd32 %.0f IOPS\n", measure(dev, 2, 32, size, seconds));
  fflush(stdout);
  return 0;
}
