// The SIMT emulator's runtime: CUDA threads as fibers on the calling OS thread.
//
// A launch runs its blocks one after another (a cooperative launch runs all of
// them together, since they may wait for each other at grid_sync). Each thread of
// the running blocks is a fiber (ucontext) with its own guard-paged stack. The
// scheduler resumes runnable fibers round-robin; a fiber runs until it reaches a
// synchronisation point (barrier, warp collective, grid sync, atomic) or exits.
// A synchronisation completes in the fiber that arrives last, which computes every
// participant's result and makes them runnable again. When no fiber is runnable
// and some have not exited, nothing can ever release them: that is a deadlock,
// reported with every waiting thread's source line.
#include "simt.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif

#ifdef SIMT_ASAN
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old,
                                     size_t* size_old);
}
#endif

namespace simt {
inline namespace emu {

DeviceModel h100_model() {
  DeviceModel m;
  m.sm_count = 132;
  m.max_threads_per_sm = 2048;
  m.max_blocks_per_sm = 32;
  m.regs_per_sm = 64 * 1024;
  m.smem_per_sm = 228 * 1024;
  m.smem_per_block_optin = 227 * 1024;
  return m;
}

namespace {
DeviceModel& model_storage() {
  static DeviceModel model = h100_model();
  return model;
}

struct CountStore {
  std::mutex mu;
  bool on = false;
  std::vector<LaunchCount> launches;
  std::vector<GemmCount> gemms;
};
CountStore& counts() {
  static CountStore store;
  return store;
}
}  // namespace

const DeviceModel& device_model() { return model_storage(); }

void set_device_model(const DeviceModel& m) {
  if (m.sm_count < 1 || m.max_threads_per_sm < 32 || m.max_blocks_per_sm < 1 ||
      m.regs_per_sm < 1 || m.smem_per_sm < 1 || m.smem_per_block_optin > m.smem_per_sm) {
    throw std::invalid_argument(
        "simt emulator: a device model needs at least one SM, 32 threads, one block and "
        "some registers and shared memory per SM, and no more shared memory per block than "
        "per SM");
  }
  model_storage() = m;
}

void set_counting(bool on) {
  CountStore& c = counts();
  std::lock_guard<std::mutex> lock(c.mu);
  c.on = on;
}
bool counting() {
  CountStore& c = counts();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.on;
}
void take_counts(std::vector<LaunchCount>& launches, std::vector<GemmCount>& gemms) {
  CountStore& c = counts();
  std::lock_guard<std::mutex> lock(c.mu);
  launches.swap(c.launches);
  gemms.swap(c.gemms);
  c.launches.clear();
  c.gemms.clear();
}
void record_gemm(const char* what, int64_t m, int64_t n, int64_t k) {
  CountStore& c = counts();
  std::lock_guard<std::mutex> lock(c.mu);
  if (c.on) c.gemms.push_back(GemmCount{what, m, n, k});
}

namespace detail {

enum class Wait : int { kRunnable, kBarrier, kWarp, kGrid, kExited };

#ifdef SIMT_ASAN
constexpr size_t kStackSize = 512 * 1024;
#else
constexpr size_t kStackSize = 128 * 1024;
#endif

struct Stack {
  void* base = nullptr;  // mapping start (guard page)
  size_t size = 0;       // whole mapping
  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size = kStackSize + page;
    base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                -1, 0);
    if (base == MAP_FAILED) {
      std::fprintf(stderr, "simt emulator: cannot map a %zu-byte fiber stack\n", size);
      std::abort();
    }
    // The lowest page traps a stack overflow instead of corrupting a neighbour.
    mprotect(base, page, PROT_NONE);
  }
  ~Stack() { munmap(base, size); }
  char* usable() const { return static_cast<char*>(base) + (size - kStackSize); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
};

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<Stack> stack;
  uint3_t tid;
  Block* block = nullptr;
  int linear = 0, lane = 0, warp = 0;
  Wait wait = Wait::kRunnable;
  const char* file = "";
  int line = 0;
  // Payload of the synchronisation it waits at.
  int bar_op = 0, pred = 0;
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
  void* fake_stack = nullptr;  // ASan bookkeeping
};

struct Block {
  uint3_t idx;
  std::vector<Fiber*> threads;
  std::vector<unsigned char> storage;  // the block's shared memory, with room to align it
  unsigned char* smem = nullptr;       // 128-byte aligned, as on the GPU
  size_t smem_size = 0;
  int exited = 0;
  int at_barrier = 0;
};

struct Launch {
  const LaunchConfig* cfg = nullptr;
  bool cooperative = false;
  const std::function<void()>* body = nullptr;
  std::vector<Block> blocks;  // the blocks being run now
  std::vector<Fiber*> fibers; // their threads, in schedule order
  int exited = 0, at_grid = 0;
  long spins = 0;             // scheduling points without progress, in a row
  LaunchCount* count = nullptr;  // while counting
};

struct Runtime {
  Fiber* current = nullptr;
  Launch* launch = nullptr;
  ucontext_t scheduler;
  void* sched_fake_stack = nullptr;
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  std::vector<std::unique_ptr<Fiber>> pool;  // fibers (and stacks) reused across launches
};

thread_local Runtime rt;

[[noreturn]] void fail(const char* fmt, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "\nsimt emulator: ");
  if (rt.launch != nullptr) std::fprintf(stderr, "kernel %s: ", rt.launch->cfg->name);
  if (rt.current != nullptr) {
    const Fiber& f = *rt.current;
    std::fprintf(stderr, "block (%u,%u,%u) thread (%u,%u,%u): ", f.block->idx.x, f.block->idx.y,
                 f.block->idx.z, f.tid.x, f.tid.y, f.tid.z);
  }
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

Fiber& self() {
  if (rt.current == nullptr) {
    std::fprintf(stderr, "simt emulator: a device builtin was used outside a kernel\n");
    std::abort();
  }
  return *rt.current;
}
const uint3_t& thread_idx() { return self().tid; }
const uint3_t& block_idx() { return self().block->idx; }
const dim3_t& block_dim() { return rt.launch->cfg->block; }
const dim3_t& grid_dim() { return rt.launch->cfg->grid; }
unsigned char* block_smem() {
  Block& b = *self().block;
  return b.smem_size == 0 ? nullptr : b.smem;
}

const char* wait_name(const Fiber& f) {
  switch (f.wait) {
    case Wait::kRunnable: return "runnable";
    case Wait::kBarrier: return "__syncthreads";
    case Wait::kWarp: return "a warp collective";
    case Wait::kGrid: return "grid_sync";
    case Wait::kExited: return "exited";
  }
  return "?";
}

// ------------------------------------------------------------- context switches

void fiber_main();

// Scheduler -> fiber.
void resume(Fiber* f) {
  rt.current = f;
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(&rt.sched_fake_stack, f->stack->usable(), kStackSize);
#endif
  swapcontext(&rt.scheduler, &f->ctx);
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(rt.sched_fake_stack, nullptr, nullptr);
#endif
  rt.current = nullptr;
}

// Fiber -> scheduler. `dying` for the last switch of a fiber's run.
void suspend(bool dying = false) {
  Fiber* f = rt.current;
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f->fake_stack, rt.sched_stack_bottom,
                                 rt.sched_stack_size);
#else
  (void)dying;
#endif
  swapcontext(&f->ctx, &rt.scheduler);
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &rt.sched_stack_bottom, &rt.sched_stack_size);
#endif
  rt.current = f;
}

void fiber_main() {
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &rt.sched_stack_bottom, &rt.sched_stack_size);
#endif
  Fiber* f = rt.current;
  (*rt.launch->body)();
  // Exit: a thread that leaves while others wait for it breaks their barrier.
  Block& b = *f->block;
  f->wait = Wait::kExited;
  b.exited += 1;
  rt.launch->exited += 1;
  rt.launch->spins = 0;
  if (b.at_barrier > 0) {
    const Fiber* waiter = nullptr;
    for (const Fiber* o : b.threads)
      if (o->wait == Wait::kBarrier) waiter = o;
    fail("exited while %d thread(s) of its block wait at __syncthreads (%s:%d): a barrier that "
         "some threads never reach",
         b.at_barrier, waiter->file, waiter->line);
  }
  if (rt.launch->at_grid > 0) {
    fail("exited while %d thread(s) wait at grid_sync: a grid barrier that some threads never "
         "reach", rt.launch->at_grid);
  }
  const int warp_base = f->warp * 32;
  for (Fiber* o : b.threads) {
    if (o->wait == Wait::kWarp && o->linear / 32 == f->warp &&
        (o->mask >> (f->linear - warp_base) & 1u)) {
      fail("exited while lane %d waits in a warp collective (%s:%d) whose mask 0x%08x names it",
           o->lane, o->file, o->line, o->mask);
    }
  }
  suspend(true);
  fail("internal error: an exited fiber was resumed");
}

// ------------------------------------------------------------- synchronisation

// Parks the current fiber until a collective releases it (or yields once when
// it is already runnable).
void park() {
  if (rt.current->wait != Wait::kRunnable) suspend();
}

int block_barrier(int op, int pred, const char* file, int line) {
  Fiber& f = self();
  Block& b = *f.block;
  if (b.exited > 0) {
    fail("__syncthreads at %s:%d, but %d thread(s) of this block have exited: a barrier that "
         "some threads never reach",
         file, line, b.exited);
  }
  for (Fiber* o : b.threads) {
    if (o->wait == Wait::kBarrier && (o->line != line || std::strcmp(o->file, file) != 0)) {
      fail("waits at __syncthreads at %s:%d while thread (%u,%u,%u) waits at a different one "
           "(%s:%d): threads of a block waiting at different barriers",
           file, line, o->tid.x, o->tid.y, o->tid.z, o->file, o->line);
    }
  }
  f.wait = Wait::kBarrier;
  f.file = file;
  f.line = line;
  f.bar_op = op;
  f.pred = pred;
  b.at_barrier += 1;
  if (b.at_barrier == static_cast<int>(b.threads.size())) {
    int count = 0;
    for (Fiber* o : b.threads) count += o->pred;
    const int n = static_cast<int>(b.threads.size());
    const int result = op == 1 ? count : op == 2 ? (count == n) : op == 3 ? (count > 0) : 0;
    for (Fiber* o : b.threads) {
      o->wait = Wait::kRunnable;
      o->pred = result;
    }
    b.at_barrier = 0;
    rt.launch->spins = 0;
    if (rt.launch->count != nullptr) rt.launch->count->block_barriers += 1;
  }
  park();
  return f.pred;
}

void grid_barrier(const char* file, int line) {
  Fiber& f = self();
  Launch& L = *rt.launch;
  if (!L.cooperative) fail("grid_sync at %s:%d in a launch that is not cooperative", file, line);
  if (L.exited > 0) {
    fail("grid_sync at %s:%d, but %d thread(s) of the grid have exited: a grid barrier that "
         "some threads never reach", file, line, L.exited);
  }
  f.wait = Wait::kGrid;
  f.file = file;
  f.line = line;
  L.at_grid += 1;
  if (L.at_grid == static_cast<int>(L.fibers.size())) {
    for (Fiber* o : L.fibers) o->wait = Wait::kRunnable;
    L.at_grid = 0;
    L.spins = 0;
    if (L.count != nullptr) L.count->grid_syncs += 1;
  }
  park();
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kSync: return "__syncwarp";
    case WarpOp::kShfl: return "__shfl_sync";
    case WarpOp::kUp: return "__shfl_up_sync";
    case WarpOp::kDown: return "__shfl_down_sync";
    case WarpOp::kXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kAll: return "__all_sync";
  }
  return "?";
}

// Every lane of `mask` (lanes of the caller's warp) has arrived: compute results.
void complete_warp(Fiber** lanes, unsigned mask, WarpOp op) {
  uint64_t ballot = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && lanes[l]->value != 0) ballot |= uint64_t{1} << l;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber& f = *lanes[l];
    const int w = f.width;
    const int seg = l & ~(w - 1);
    int src = l;
    switch (op) {
      case WarpOp::kSync: f.result = 0; break;
      case WarpOp::kBallot: f.result = ballot; break;
      case WarpOp::kAny: f.result = ballot != 0; break;
      case WarpOp::kAll: f.result = ballot == mask; break;
      case WarpOp::kShfl: src = seg + (((f.arg % w) + w) % w); break;
      case WarpOp::kUp: src = l - f.arg >= seg ? l - f.arg : l; break;
      case WarpOp::kDown: src = l + f.arg < seg + w ? l + f.arg : l; break;
      case WarpOp::kXor: src = ((l ^ f.arg) < seg + w) ? (l ^ f.arg) : l; break;
    }
    if (op == WarpOp::kShfl || op == WarpOp::kUp || op == WarpOp::kDown || op == WarpOp::kXor) {
      // Reading a lane outside the mask is undefined on the GPU: poison it.
      f.result = (mask >> src & 1u) ? lanes[src]->value : ~uint64_t{0};
    }
  }
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1u) lanes[l]->wait = Wait::kRunnable;
  rt.launch->spins = 0;
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t bits, int arg, int width,
                         const char* file, int line) {
  Fiber& f = self();
  Block& b = *f.block;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail("%s at %s:%d: width %d is not a power of two in [1, 32]", op_name(op), file, line, width);
  if (!(mask >> f.lane & 1u))
    fail("%s at %s:%d: mask 0x%08x does not include the calling lane %d", op_name(op), file, line,
         mask, f.lane);
  const int base = f.warp * 32;
  Fiber* lanes[32] = {};
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    if (base + l >= static_cast<int>(b.threads.size()))
      fail("%s at %s:%d: mask 0x%08x names lane %d, which does not exist (block of %zu threads)",
           op_name(op), file, line, mask, l, b.threads.size());
    lanes[l] = b.threads[base + l];
    if (lanes[l]->wait == Wait::kExited)
      fail("%s at %s:%d: mask 0x%08x names lane %d, which has exited", op_name(op), file, line,
           mask, l);
  }
  f.wait = Wait::kWarp;
  f.file = file;
  f.line = line;
  f.op = op;
  f.mask = mask;
  f.value = bits;
  f.arg = arg;
  f.width = width;
  bool all = true;
  for (int l = 0; l < 32 && all; ++l) {
    if (!(mask >> l & 1u)) continue;
    const Fiber& o = *lanes[l];
    all = o.wait == Wait::kWarp && o.mask == mask;
    if (all && o.op != op) {
      fail("%s at %s:%d meets %s at %s:%d from lane %d with the same mask: warp collectives "
           "that do not match", op_name(op), file, line, op_name(o.op), o.file, o.line, l);
    }
  }
  if (all) complete_warp(lanes, mask, op);
  park();
  return f.result;
}

void global_access(const void* p, size_t bytes, bool write) {
  if (rt.launch == nullptr || rt.current == nullptr) return;  // host code
  const Block& b = *rt.current->block;
  const auto* q = static_cast<const unsigned char*>(p);
  if (b.smem_size > 0 && q >= b.smem && q < b.smem + b.smem_size) {
    fail("simt::%s of shared memory (offset %td): ld/ldg/st are for global memory; access "
         "shared memory directly", write ? "st" : "ld", q - b.smem);
  }
  if (LaunchCount* c = rt.launch->count) {
    (write ? c->global_bytes_written : c->global_bytes_read) += bytes;
  }
}

bool lane_zero_impl() { return self().lane == 0; }
void count_mma_impl() {
  if (rt.launch != nullptr && rt.launch->count != nullptr) rt.launch->count->mma_syncs += 1;
}

void atomic_point(bool changed) {
  Launch& L = *rt.launch;
  if (changed) {
    L.spins = 0;
  } else if (++L.spins > 300000) {
    fail("livelock: 300,000 atomics in a row changed nothing (threads spinning on a value "
         "that no thread will ever write?)");
  }
  suspend();  // stays runnable: a plain yield
}

// ------------------------------------------------------------------- scheduling

[[noreturn]] void deadlock(Launch& L) {
  std::fflush(stdout);
  std::fprintf(stderr, "\nsimt emulator: kernel %s: deadlock: no thread can run.\n", L.cfg->name);
  int shown = 0;
  for (Fiber* f : L.fibers) {
    if (f->wait == Wait::kExited) continue;
    if (++shown > 16) {
      std::fprintf(stderr, "  ...\n");
      break;
    }
    std::fprintf(stderr, "  block (%u,%u,%u) thread (%u,%u,%u) waits at %s (%s:%d)", f->block->idx.x,
                 f->block->idx.y, f->block->idx.z, f->tid.x, f->tid.y, f->tid.z, wait_name(*f),
                 f->file, f->line);
    if (f->wait == Wait::kWarp) std::fprintf(stderr, " %s mask 0x%08x", op_name(f->op), f->mask);
    std::fprintf(stderr, "\n");
  }
  std::fflush(stderr);
  std::abort();
}

void prepare(Fiber& f) {
  if (!f.stack) f.stack = std::make_unique<Stack>();
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack->usable();
  f.ctx.uc_stack.ss_size = kStackSize;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_main, 0);
  f.wait = Wait::kRunnable;
  f.file = "";
  f.line = 0;
  f.fake_stack = nullptr;
}

// Runs blocks [first, first + count) of the grid together until all exit.
void run_blocks(Launch& L, size_t first, size_t count) {
  const dim3_t& g = L.cfg->grid;
  const dim3_t& bd = L.cfg->block;
  const int nthreads = static_cast<int>(bd.x * bd.y * bd.z);
  L.blocks.assign(count, Block{});
  L.fibers.clear();
  L.exited = 0;
  L.at_grid = 0;
  L.spins = 0;
  const size_t need = count * static_cast<size_t>(nthreads);
  while (rt.pool.size() < need) rt.pool.push_back(std::make_unique<Fiber>());
  size_t next = 0;
  for (size_t i = 0; i < count; ++i) {
    Block& b = L.blocks[i];
    const size_t lin = first + i;
    b.idx = {static_cast<unsigned>(lin % g.x), static_cast<unsigned>(lin / g.x % g.y),
             static_cast<unsigned>(lin / (static_cast<size_t>(g.x) * g.y))};
    // Poison: every byte 0xFF reads as NaN (float, double, half) or -1 (integers).
    b.storage.assign(L.cfg->smem + 128, 0xFF);
    const uintptr_t at = reinterpret_cast<uintptr_t>(b.storage.data());
    b.smem = b.storage.data() + ((128 - at % 128) % 128);
    b.smem_size = L.cfg->smem;
    for (int t = 0; t < nthreads; ++t) {
      Fiber& f = *rt.pool[next++];
      f.block = &b;
      f.linear = t;
      f.lane = t % 32;
      f.warp = t / 32;
      f.tid = {static_cast<unsigned>(t % bd.x), static_cast<unsigned>(t / bd.x % bd.y),
               static_cast<unsigned>(t / (bd.x * bd.y))};
      prepare(f);
      b.threads.push_back(&f);
      L.fibers.push_back(&f);
    }
  }
  const int total = static_cast<int>(L.fibers.size());
  while (L.exited < total) {
    bool ran = false;
    for (Fiber* f : L.fibers) {
      if (f->wait == Wait::kRunnable) {
        resume(f);
        ran = true;
      }
    }
    if (!ran && L.exited < total) deadlock(L);
  }
}

void run(const LaunchConfig& cfg, bool cooperative, const std::function<void()>& body) {
  const DeviceModel& dev = device_model();
  const dim3_t& g = cfg.grid;
  const dim3_t& b = cfg.block;
  const size_t threads = static_cast<size_t>(b.x) * b.y * b.z;
  auto reject = [&](const std::string& why) {
    throw LaunchError(std::string("simt emulator: launch of ") + cfg.name + " rejected: " + why);
  };
  if (threads == 0 || g.x == 0 || g.y == 0 || g.z == 0) reject("empty grid or block");
  if (threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
    reject("block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," +
           std::to_string(b.z) + ") exceeds 1024 threads or the per-dimension limits");
  if (g.y > 65535 || g.z > 65535) reject("grid y/z above 65535");
  if (cfg.smem > dev.smem_per_block_optin)
    reject(std::to_string(cfg.smem) + " bytes of dynamic shared memory (limit " +
           std::to_string(dev.smem_per_block_optin) + " per block)");
  if (rt.launch != nullptr) reject("a launch from inside a kernel (dynamic parallelism)");
  const size_t nblocks = static_cast<size_t>(g.x) * g.y * g.z;
  if (cooperative) {
    size_t per_sm = std::min<size_t>(dev.max_blocks_per_sm, dev.max_threads_per_sm / threads);
    if (cfg.smem > 0) per_sm = std::min(per_sm, dev.smem_per_sm / cfg.smem);
    const size_t cap = per_sm * static_cast<size_t>(dev.sm_count);
    if (nblocks > cap)
      reject("cooperative grid of " + std::to_string(nblocks) + " blocks cannot be co-resident (" +
             std::to_string(cap) + " at most for this block size and shared memory)");
  }
  Launch L;
  L.cfg = &cfg;
  L.cooperative = cooperative;
  L.body = &body;
  LaunchCount count;
  if (counting()) {
    count.name = cfg.name;
    count.grid[0] = g.x, count.grid[1] = g.y, count.grid[2] = g.z;
    count.block[0] = b.x, count.block[1] = b.y, count.block[2] = b.z;
    count.cooperative = cooperative;
    count.bytes_counted = cfg.counted;
    count.shared_bytes = cfg.smem;
    L.count = &count;
  }
  rt.launch = &L;
  if (cooperative) {
    run_blocks(L, 0, nblocks);
  } else {
    for (size_t i = 0; i < nblocks; ++i) run_blocks(L, i, 1);
  }
  rt.launch = nullptr;
  if (L.count != nullptr) {
    CountStore& c = counts();
    std::lock_guard<std::mutex> lock(c.mu);
    c.launches.push_back(std::move(count));
  }
}

}  // namespace detail
}  // namespace emu
}  // namespace simt

#if SIMT_HAS_HALF
namespace simt {
namespace wmma {
namespace detail {

void check_tile(const void* p, unsigned ldm, size_t elem, const char* what, const char* file,
                int line) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::simt::emu::detail::fail("wmma::%s at %s:%d: the pointer is not 256-bit aligned", what,
                              file, line);
  }
  if ((ldm * elem) % 16 != 0) {
    ::simt::emu::detail::fail("wmma::%s at %s:%d: ldm %u is not a multiple of 16 bytes", what,
                              file, line, ldm);
  }
}

bool lane_zero() { return ::simt::emu::detail::lane_zero_impl(); }
void count_mma() { ::simt::emu::detail::count_mma_impl(); }

}  // namespace detail
}  // namespace wmma
}  // namespace simt
#endif
