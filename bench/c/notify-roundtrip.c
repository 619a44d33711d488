// Virtqueue notification round trip, driver side, and its C floor.
//
//   notify-roundtrip driver MEM_FD KICK_FD CALL_FD SIZE DESC AVAIL USED DATA WARMUP COUNT CPU
//     Drives a split virtqueue that is already set up (EVENT_IDX negotiated) in the shared
//     memory MEM_FD, against whatever device serves KICK_FD (ioeventfd side) and CALL_FD
//     (irqfd side). One round trip: offer a one-descriptor chain, publish avail.idx, kick if
//     avail_event asks for it, block in poll() until the call eventfd fires, check the chain
//     came back. Addresses are offsets into MEM_FD.
//   notify-roundtrip floor SIZE WARMUP COUNT DRIVER_CPU DEVICE_CPU
//     The same driver against a device written in C, in a forked process over a fresh
//     memfd and two fresh eventfds: the floor for any device process.
// A CPU of -1 leaves the process where the scheduler puts it. Placement matters a lot on a
// nested VM: a wake-up on another CPU is an IPI, several times dearer than one on the same CPU.
//
// Prints "p50_ns p99_ns mean_ns" of COUNT round trips measured after WARMUP.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DESC_F_WRITE 2u
#define MEM_SIZE (1u << 20)
#define BUF_LEN 64u

struct desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct used_elem { uint32_t id; uint32_t len; };

struct ring {
  uint8_t *mem;
  uint32_t size;
  struct desc *desc;
  volatile uint16_t *avail; // flags, idx, ring[size], used_event
  volatile uint16_t *used;  // flags, idx, then elems; avail_event after them
  volatile struct used_elem *elems;
  uint64_t data;
};

static void die(const char *what) { perror(what); exit(1); }

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

// virtio 1.2 §2.7.10: does moving the index from old to new_idx pass event?
static int need_event(uint16_t event, uint16_t new_idx, uint16_t old) {
  return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

static uint16_t load16(volatile uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store16(volatile uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static void signal_fd(int fd) {
  uint64_t one = 1;
  if (write(fd, &one, 8) != 8) die("eventfd write");
}

// Blocks until fd is readable and reads (resets) it. Returns 0 when the peer is gone.
static int wait_fd(int fd) {
  struct pollfd p = { .fd = fd, .events = POLLIN };
  for (;;) {
    int n = poll(&p, 1, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("poll");
    if (p.revents & (POLLERR | POLLNVAL)) return 0;
    uint64_t v;
    ssize_t r = read(fd, &v, 8);
    if (r == 8) return 1;
    if (r < 0 && errno == EAGAIN) continue; // eventfds here are O_NONBLOCK (libuv sets it)
    die("eventfd read");
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static struct ring map_ring(int mem_fd, uint32_t size, uint64_t desc, uint64_t avail, uint64_t used, uint64_t data) {
  struct ring r = { .size = size, .data = data };
  r.mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mem_fd, 0);
  if (r.mem == MAP_FAILED) die("mmap");
  if (size == 0 || (size & (size - 1)) || size > 32768) { fprintf(stderr, "bad queue size %u\n", size); exit(2); }
  if (desc + 16ull * size > MEM_SIZE || avail + 6 + 2ull * size > MEM_SIZE || used + 6 + 8ull * size > MEM_SIZE
      || data + (uint64_t)BUF_LEN * size > MEM_SIZE) { fprintf(stderr, "ring outside memory\n"); exit(2); }
  r.desc = (struct desc *)(r.mem + desc);
  r.avail = (volatile uint16_t *)(r.mem + avail);
  r.used = (volatile uint16_t *)(r.mem + used);
  r.elems = (volatile struct used_elem *)(r.mem + used + 4);
  return r;
}

// The guest driver: COUNT + WARMUP round trips, one chain each. Returns the sorted round trips.
static void drive(struct ring *r, int kick, int call, long warmup, long count) {
  uint32_t size = r->size;
  for (uint32_t i = 0; i < size; i++) r->desc[i] = (struct desc){ r->data + (uint64_t)i * BUF_LEN, BUF_LEN, DESC_F_WRITE, 0 };
  volatile uint16_t *used_event = &r->avail[2 + size];
  volatile uint16_t *avail_event = &r->used[2 + 4 * size];
  uint16_t avail_idx = load16(&r->avail[1]);
  uint16_t used_seen = load16(&r->used[1]);
  uint64_t *t = malloc(sizeof(uint64_t) * (size_t)count);
  if (!t) die("malloc");
  for (long i = 0; i < warmup + count; i++) {
    uint64_t t0 = now_ns();
    uint16_t head = (uint16_t)(i & (size - 1));
    r->avail[2 + (avail_idx & (size - 1))] = head;
    store16(used_event, used_seen); // interrupt me at the next used entry
    uint16_t old = avail_idx++;
    store16(&r->avail[1], avail_idx);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); // avail.idx visible before avail_event is read
    if (need_event(load16(avail_event), avail_idx, old)) signal_fd(kick);
    do {
      if (!wait_fd(call)) { fprintf(stderr, "call eventfd closed\n"); exit(1); }
    } while (load16(&r->used[1]) == used_seen);
    uint64_t t1 = now_ns();
    uint16_t got = load16(&r->used[1]);
    if ((uint16_t)(got - used_seen) != 1 || r->elems[used_seen & (size - 1)].id != head) {
      fprintf(stderr, "device returned %u chains (head %u, expected %u)\n", (uint16_t)(got - used_seen),
              r->elems[used_seen & (size - 1)].id, head);
      exit(1);
    }
    used_seen = got;
    if (i >= warmup) t[i - warmup] = t1 - t0;
  }
  qsort(t, (size_t)count, sizeof(uint64_t), cmp_u64);
  double sum = 0;
  for (long i = 0; i < count; i++) sum += (double)t[i];
  printf("%llu %llu %.0f\n", (unsigned long long)t[count / 2], (unsigned long long)t[(long)(count * 0.99)], sum / (double)count);
  free(t);
}

// The C device: drains the ring on each kick the way rxvirt's DeviceQueue does (pop every
// chain, re-arm avail_event, drain again if more arrived, publish used.idx once, signal the
// call eventfd if used_event asks for it).
static void serve(struct ring *r, int kick, int call) {
  uint32_t size = r->size;
  volatile uint16_t *used_event = &r->avail[2 + size];
  volatile uint16_t *avail_event = &r->used[2 + 4 * size];
  uint16_t next_avail = 0, used_idx = 0, signalled = 0;
  while (wait_fd(kick)) {
    for (;;) {
      uint16_t avail_idx;
      while (next_avail != (avail_idx = load16(&r->avail[1]))) {
        (void)avail_idx;
        uint16_t head = r->avail[2 + (next_avail & (size - 1))];
        if (head >= size) { fprintf(stderr, "bad head %u\n", head); exit(1); }
        struct desc d = r->desc[head];
        if (d.addr + d.len > MEM_SIZE || !(d.flags & DESC_F_WRITE)) { fprintf(stderr, "bad descriptor\n"); exit(1); }
        r->elems[used_idx & (size - 1)] = (struct used_elem){ head, 0 };
        used_idx++;
        next_avail++;
      }
      store16(avail_event, next_avail);
      __atomic_thread_fence(__ATOMIC_SEQ_CST);
      if (load16(&r->avail[1]) == next_avail) break;
    }
    if (used_idx == signalled) continue;
    store16(&r->used[1], used_idx);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); // used.idx visible before used_event is read
    uint16_t old = signalled;
    signalled = used_idx;
    if (need_event(load16(used_event), used_idx, old)) signal_fd(call);
  }
  exit(0);
}

static void pin(long cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET((int)cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
}

static long arg_long(const char *s) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 0);
  if (errno || *end || v < 0) { fprintf(stderr, "bad number '%s'\n", s); exit(2); }
  return v;
}

static long arg_cpu(const char *s) {
  return strcmp(s, "-1") == 0 ? -1 : arg_long(s);
}

int main(int argc, char **argv) {
  if (argc == 13 && strcmp(argv[1], "driver") == 0) {
    pin(arg_cpu(argv[12]));
    struct ring r = map_ring((int)arg_long(argv[2]), (uint32_t)arg_long(argv[5]), (uint64_t)arg_long(argv[6]),
                             (uint64_t)arg_long(argv[7]), (uint64_t)arg_long(argv[8]), (uint64_t)arg_long(argv[9]));
    drive(&r, (int)arg_long(argv[3]), (int)arg_long(argv[4]), arg_long(argv[10]), arg_long(argv[11]));
    return 0;
  }
  if (argc == 7 && strcmp(argv[1], "floor") == 0) {
    long driver_cpu = arg_cpu(argv[5]), device_cpu = arg_cpu(argv[6]);
    uint32_t size = (uint32_t)arg_long(argv[2]);
    int mem_fd = memfd_create("notify-floor", MFD_CLOEXEC);
    if (mem_fd < 0 || ftruncate(mem_fd, MEM_SIZE) < 0) die("memfd");
    int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (kick < 0 || call < 0) die("eventfd");
    // The layout virtio-mmio drivers use: descriptors, avail ring, used ring 4 KiB aligned, data after.
    uint64_t desc = 0, avail = 16ull * size, used = (avail + 6 + 2ull * size + 4095) & ~4095ull;
    uint64_t data = (used + 6 + 8ull * size + 4095) & ~4095ull;
    struct ring r = map_ring(mem_fd, size, desc, avail, used, data);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      pin(device_cpu);
      serve(&r, kick, call);
    }
    pin(driver_cpu);
    drive(&r, kick, call, arg_long(argv[3]), arg_long(argv[4]));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
  }
  fprintf(stderr, "usage: notify-roundtrip driver MEM_FD KICK_FD CALL_FD SIZE DESC AVAIL USED DATA WARMUP COUNT CPU\n"
                  "       notify-roundtrip floor SIZE WARMUP COUNT DRIVER_CPU DEVICE_CPU\n");
  return 2;
}
