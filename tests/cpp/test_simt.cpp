// Tests of the SIMT emulator (csrc/simt/): semantics it must reproduce, and the
// bugs it must catch. Framework-free; run by ctest (also under ASan/UBSan).
//
//   test_simt            run every case
//   test_simt <name>     run one case (the abort cases run themselves in a child
//                        process this way and check its exit and message)
#include "simt/simt.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

static int g_failures = 0;
#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                              \
    }                                                                            \
  } while (0)

using simt::LaunchConfig;

// ------------------------------------------------------------------- kernels

__global__ void exchange_kernel(int* out) {
  int* s = simt::dynamic_shared<int>();
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = 1000 * blockIdx.x + 2 * t;
  __syncthreads();
  out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// Transposes a 32x32 tile through shared memory; without the barrier a thread
// reads entries other threads have not written yet (still poisoned).
template <bool Barrier>
__global__ void transpose_kernel(const float* in, float* out) {
  float* tile = simt::dynamic_shared<float>();
  const int x = threadIdx.x, y = threadIdx.y;
  tile[y * 32 + x] = in[y * 32 + x];
  if (Barrier) __syncthreads();
  out[y * 32 + x] = tile[x * 32 + y];
}

__global__ void shuffle_kernel(int* out, int width) {
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  int* o = out + (w * 32 + lane) * 4;
  const int v = 100 * w + lane;
  o[0] = __shfl_sync(0xffffffffu, v, 3, width);
  o[1] = __shfl_up_sync(0xffffffffu, v, 2, width);
  o[2] = __shfl_down_sync(0xffffffffu, v, 5, width);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 1, width);
}

// Two halves of a warp shuffle in different branches, each with its own mask.
__global__ void divergent_shuffle_kernel(float* out) {
  const int lane = threadIdx.x;
  float v = static_cast<float>(lane);
  if (lane < 16) {
    for (int d = 8; d > 0; d /= 2) v += __shfl_xor_sync(0x0000ffffu, v, d, 16);
  } else {
    for (int d = 1; d < 16; d *= 2) v += __shfl_down_sync(0xffff0000u, v, d, 16);
  }
  out[lane] = v;
}

__global__ void vote_kernel(unsigned* out) {
  const int t = threadIdx.x;
  out[t * 6 + 0] = __ballot_sync(0xffffffffu, t % 3 == 0);
  out[t * 6 + 1] = __any_sync(0xffffffffu, t == 7);
  out[t * 6 + 2] = __all_sync(0xffffffffu, t < 32);
  out[t * 6 + 3] = __syncthreads_count(t % 2 == 0);
  out[t * 6 + 4] = __syncthreads_and(t >= 0);
  out[t * 6 + 5] = __syncthreads_or(t == 40);
}

__global__ void reduce_kernel(const double* x, int n, double* out) {
  // Warp-shuffle reduction inside each warp, then shared memory across warps.
  double* s = simt::dynamic_shared<double>();
  const int t = threadIdx.x;
  double v = 0;
  for (int i = blockIdx.x * blockDim.x + t; i < n; i += gridDim.x * blockDim.x) v += x[i];
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
  if (t % 32 == 0) s[t / 32] = v;
  __syncthreads();
  if (t == 0) {
    double total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) total += s[w];
    out[blockIdx.x] = total;
  }
}

__global__ void atomic_kernel(float* fsum, int* isum, int* imax, unsigned long long* usum) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(fsum, 0.5f);
  atomicAdd(isum, t);
  atomicMax(imax, (t * 37) % 101);
  atomicAdd(usum, 1ull);
}

// A spin lock from atomicCAS/atomicExch guarding a non-atomic update.
__global__ void lock_kernel(int* lock, int* counter) {
  if (threadIdx.x % 32 != 0) return;  // one lane per warp (no intra-warp lock contention)
  while (atomicCAS(lock, 0, 1) != 0) {
  }
  const int c = *counter;
  __threadfence();
  *counter = c + 1;
  atomicExch(lock, 0);
}

__global__ void grid_kernel(int* partial, int* out) {
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<int>(blockIdx.x) + 1;
  simt::grid_sync();
  if (threadIdx.x == 0) {
    int s = 0;
    for (unsigned b = 0; b < gridDim.x; ++b) s += partial[b];
    out[blockIdx.x] = s;
  }
}

// ----------------------------------------------------------- kernels with bugs

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void early_exit_kernel(int* out) {
  if (threadIdx.x >= 40) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void exited_lane_shuffle_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void missing_lane_shuffle_kernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);  // 20 threads
}

__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x == 0) {
    __syncthreads();  // waits for thread 1 ...
  } else if (threadIdx.x == 1) {
    __syncwarp(0x3u);  // ... which waits for thread 0 in a warp sync
  }
  out[threadIdx.x] = 1;
}

__global__ void livelock_kernel(int* flag) {
  while (atomicAdd(flag, 0) == 0) {  // nobody ever sets it
  }
}

__global__ void grid_sync_plain_kernel(int*) { simt::grid_sync(); }

// out[i] = 2 * in[i] through the counted accesses, one barrier per block.
__global__ void counted_copy_kernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  __syncthreads();
  if (i < n) simt::st(out + i, 2.0f * simt::ldg(in + i));
}

#if SIMT_HAS_HALF
// C[16 x 16] (float, row-major, ld 16) = A[16 x 32] (half, row-major, ld 40) times B, given
// as its transpose Bt[16 x 32] (row-major, ld 40), by one warp on tensor cores, from shared
// memory.
__global__ void wmma_kernel(const __half* a, const __half* bt, float* c, int offset) {
  namespace wmma = simt::wmma;
  __half* sa = simt::dynamic_shared<__half>();
  __half* sb = sa + 16 * 40;
  float* sc = reinterpret_cast<float*>(sb + 16 * 40);
  for (int e = threadIdx.x; e < 16 * 40; e += 32) {
    sa[e] = a[e];
    sb[e] = bt[e];
  }
  __syncwarp();
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int k0 = 0; k0 < 32; k0 += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::load_matrix_sync(fa, sa + k0 + offset, 40);  // offset != 0: misaligned
    wmma::load_matrix_sync(fb, sb + k0, 40);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(sc, acc, 16, wmma::mem_row_major);
  __syncwarp();
  for (int e = threadIdx.x; e < 256; e += 32) c[e] = sc[e];
}

// Only half of the warp reaches the tile load.
__global__ void wmma_half_warp_kernel(const __half* a, const __half*, float*, int) {
  namespace wmma = simt::wmma;
  if (threadIdx.x < 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, simt::dynamic_shared<__half>(), 16);
  }
  (void)a;
}
#endif

__global__ void ld_of_shared_kernel(int* out) {
  int* s = simt::dynamic_shared<int>();
  s[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] = simt::ld(s + threadIdx.x);  // shared memory is not for ld/st
}

// ----------------------------------------------------------------- the cases

static LaunchConfig cfg(const char* name, simt::dim3_t grid, simt::dim3_t block, size_t smem = 0) {
  LaunchConfig c;
  c.grid = grid;
  c.block = block;
  c.smem = smem;
  c.name = name;
  return c;
}

static void test_exchange() {
  std::vector<int> out(3 * 96, 0);
  simt::launch(exchange_kernel, cfg("exchange", 3, 96, 96 * sizeof(int)), out.data());
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 96; ++t) CHECK(out[b * 96 + t] == 1000 * b + 2 * ((t + 1) % 96));
}

static void test_transpose() {
  std::vector<float> in(32 * 32), out(32 * 32, 0.f);
  for (int i = 0; i < 32 * 32; ++i) in[i] = static_cast<float>(i);
  simt::launch(transpose_kernel<true>, cfg("transpose", 1, {32, 32}, 32 * 32 * sizeof(float)),
               in.data(), out.data());
  bool ok = true;
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x) ok = ok && out[y * 32 + x] == in[x * 32 + y];
  CHECK(ok);
  // Without the barrier the result must be wrong: poisoned (NaN) reads show up.
  simt::launch(transpose_kernel<false>,
               cfg("transpose_no_barrier", 1, {32, 32}, 32 * 32 * sizeof(float)), in.data(),
               out.data());
  int nan = 0;
  for (float v : out) nan += std::isnan(v);
  CHECK(nan > 0);
}

static void test_shuffles() {
  for (int width : {32, 8}) {
    std::vector<int> out(64 * 4, -7);
    simt::launch(shuffle_kernel, cfg("shuffle", 1, 64), out.data(), width);
    for (int t = 0; t < 64; ++t) {
      const int w = t / 32, lane = t % 32, seg = lane & ~(width - 1);
      auto val = [&](int l) { return 100 * w + l; };
      CHECK(out[t * 4 + 0] == val(seg + 3 % width));
      CHECK(out[t * 4 + 1] == val(lane - 2 >= seg ? lane - 2 : lane));
      CHECK(out[t * 4 + 2] == val(lane + 5 < seg + width ? lane + 5 : lane));
      CHECK(out[t * 4 + 3] == val(lane ^ 1));
    }
  }
}

static void test_divergent_shuffle() {
  std::vector<float> out(32, 0.f);
  simt::launch(divergent_shuffle_kernel, cfg("divergent_shuffle", 1, 32), out.data());
  // Lanes 0-15: butterfly sum of 0..15 = 120 in every lane.
  for (int l = 0; l < 16; ++l) CHECK(out[l] == 120.f);
  // Lanes 16-31: down-sweep (Kogge-Stone suffix sums within the 16-lane segment).
  std::vector<float> v(16);
  for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(16 + i);
  for (int d = 1; d < 16; d *= 2) {
    std::vector<float> nv = v;
    for (int i = 0; i < 16; ++i) nv[i] = v[i] + (i + d < 16 ? v[i + d] : v[i]);
    v = nv;
  }
  for (int i = 0; i < 16; ++i) CHECK(out[16 + i] == v[i]);
}

static void test_votes() {
  std::vector<unsigned> out(64 * 6, 0);
  simt::launch(vote_kernel, cfg("vote", 1, 64), out.data());
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l)
    if (l % 3 == 0) ballot |= 1u << l;
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    unsigned want_ballot = 0;
    for (int l = 0; l < 32; ++l)
      if ((t - lane + l) % 3 == 0) want_ballot |= 1u << l;
    CHECK(out[t * 6 + 0] == want_ballot);
    CHECK(out[t * 6 + 1] == (t < 32 ? 1u : 0u));
    CHECK(out[t * 6 + 2] == (t < 32 ? 1u : 0u));
    CHECK(out[t * 6 + 3] == 32u);
    CHECK(out[t * 6 + 4] == 1u);
    CHECK(out[t * 6 + 5] == 1u);
  }
  (void)ballot;
}

static void test_reduce() {
  const int n = 1000;
  std::vector<double> x(n);
  double want = 0;
  for (int i = 0; i < n; ++i) want += (x[i] = 0.25 * i);
  std::vector<double> part(3, 0.0);
  simt::launch(reduce_kernel, cfg("reduce", 3, 128, 4 * sizeof(double)), x.data(), n, part.data());
  CHECK(part[0] + part[1] + part[2] == want);
}

static void test_atomics() {
  float fsum = 0.f;
  int isum = 0, imax = -1;
  unsigned long long usum = 0;
  simt::launch(atomic_kernel, cfg("atomic", 4, 64), &fsum, &isum, &imax, &usum);
  CHECK(fsum == 128.f);
  CHECK(isum == 255 * 256 / 2);
  CHECK(imax == 100);
  CHECK(usum == 256ull);
  int lock = 0, counter = 0;
  simt::launch(lock_kernel, cfg("lock", 5, 128), &lock, &counter);
  CHECK(counter == 5 * 4);
  CHECK(lock == 0);
}

static void test_grid_sync() {
  std::vector<int> partial(6, 0), out(6, 0);
  simt::launch_cooperative(grid_kernel, cfg("grid", 6, 64), partial.data(), out.data());
  for (int b = 0; b < 6; ++b) CHECK(out[b] == 21);
  // A cooperative grid larger than the device could hold at once is rejected.
  bool rejected = false;
  try {
    const unsigned too_many = static_cast<unsigned>(simt::device_model().sm_count) * 2 + 1;
    simt::launch_cooperative(grid_kernel, cfg("grid_too_big", too_many, 1024), partial.data(),
                             out.data());
  } catch (const simt::LaunchError& e) {
    rejected = std::strstr(e.what(), "co-resident") != nullptr;
  }
  CHECK(rejected);
}

static void test_launch_limits() {
  int dummy[2048] = {};
  auto rejects = [&](const LaunchConfig& c) {
    try {
      simt::launch(exchange_kernel, c, dummy);
    } catch (const simt::LaunchError&) {
      return true;
    }
    return false;
  };
  CHECK(rejects(cfg("too_many_threads", 1, 2048)));
  // Beyond 48 KiB a kernel is opted in (the GPU backend does it); beyond the device's
  // opt-in limit a launch is rejected.
  CHECK(!rejects(cfg("opted_in_smem", 1, 32, 64 * 1024)));
  CHECK(rejects(cfg("too_much_smem", 1, 32, simt::device_model().smem_per_block_optin + 16)));
  CHECK(rejects(cfg("empty_grid", 0, 32)));
}

static void test_counters() {
  const int n = 300;
  std::vector<float> in(n, 1.5f), out(n, 0.f);
  std::vector<simt::LaunchCount> launches;
  std::vector<simt::GemmCount> gemms;
  simt::take_counts(launches, gemms);  // discard anything recorded before
  simt::launch(counted_copy_kernel, cfg("not_counted", 3, 128), in.data(), out.data(), n);
  simt::set_counting(true);
  simt::launch(counted_copy_kernel, cfg("copy", 3, 128), in.data(), out.data(), n);
  std::vector<int> partial(6, 0), sums(6, 0);
  simt::launch_cooperative(grid_kernel, cfg("grid", 6, 64), partial.data(), sums.data());
  simt::record_gemm("mm", 4, 256, 64);
  simt::set_counting(false);
  simt::record_gemm("mm", 1, 1, 1);  // not recorded
  simt::take_counts(launches, gemms);
  CHECK(out[n - 1] == 3.0f);
  CHECK(launches.size() == 2);
  if (launches.size() == 2) {
    const simt::LaunchCount& c = launches[0];
    CHECK(c.name == "copy" && c.grid[0] == 3 && c.block[0] == 128 && !c.cooperative);
    CHECK(c.global_bytes_read == n * sizeof(float) && c.global_bytes_written == n * sizeof(float));
    CHECK(c.block_barriers == 3 && c.grid_syncs == 0);
    CHECK(launches[1].cooperative && launches[1].grid_syncs == 1);
  }
  CHECK(gemms.size() == 1 && gemms[0].m == 4 && gemms[0].n == 256 && gemms[0].k == 64);
}

#if SIMT_HAS_HALF
static void test_wmma() {
  std::vector<__half> a(16 * 40), bt(16 * 40);
  std::vector<float> c(256, 0.f), fa(16 * 40), fb(16 * 40);
  for (int e = 0; e < 16 * 40; ++e) {
    fa[e] = static_cast<float>((e * 7) % 13 - 6) / 8.0f;  // exact in half
    fb[e] = static_cast<float>((e * 5) % 11 - 5) / 4.0f;
    a[e] = __float2half(fa[e]);
    bt[e] = __float2half(fb[e]);
  }
  std::vector<simt::LaunchCount> launches;
  std::vector<simt::GemmCount> gemms;
  simt::take_counts(launches, gemms);
  simt::set_counting(true);
  simt::launch(wmma_kernel, cfg("wmma", 1, 32, 2 * 16 * 40 * sizeof(__half) + 256 * sizeof(float)),
               a.data(), bt.data(), c.data(), 0);
  simt::set_counting(false);
  simt::take_counts(launches, gemms);
  bool ok = true;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float want = 0.f;
      for (int k = 0; k < 32; ++k) want += fa[i * 40 + k] * fb[j * 40 + k];
      ok = ok && c[i * 16 + j] == want;  // small integers over powers of two: exact
    }
  CHECK(ok);
  CHECK(launches.size() == 1 && launches[0].mma_syncs == 2);
}
#endif

static void test_device_model() {
  const simt::DeviceModel saved = simt::device_model();
  CHECK(saved.sm_count == 132 && saved.smem_per_block_optin == 227 * 1024);
  simt::DeviceModel small = saved;
  small.sm_count = 4;
  simt::set_device_model(small);
  CHECK(simt::device_props().sm_count == 4);
  // 2 blocks of 1024 threads an SM: 8 co-resident, 9 are refused.
  std::vector<int> partial(9, 0), out(9, 0);
  simt::launch_cooperative(grid_kernel, cfg("grid_fits", 8, 1024), partial.data(), out.data());
  bool rejected = false;
  try {
    simt::launch_cooperative(grid_kernel, cfg("grid_too_big", 9, 1024), partial.data(),
                             out.data());
  } catch (const simt::LaunchError& e) {
    rejected = std::strstr(e.what(), "co-resident") != nullptr;
  }
  CHECK(rejected);
  CHECK(simt::blocks_per_sm(grid_kernel, 1024, 0, 0) == 2);
  CHECK(simt::blocks_per_sm(grid_kernel, 256, 100 * 1024, 0) == 2);    // shared memory
  CHECK(simt::blocks_per_sm(grid_kernel, 256, 0, 128) == 2);           // registers
  CHECK(simt::blocks_per_sm(grid_kernel, 256, 228 * 1024, 0) == 0);    // over the opt-in limit
  bool invalid = false;
  try {
    small.sm_count = 0;
    simt::set_device_model(small);
  } catch (const std::invalid_argument&) {
    invalid = true;
  }
  CHECK(invalid);
  simt::set_device_model(saved);
}

// ----------------------------------------------------------- abort cases

struct AbortCase {
  std::function<void()> run;
  const char* expect;  // substring of the emulator's message
};

static std::map<std::string, AbortCase> abort_cases() {
  static int buf[1024];
  return {
      {"abort_divergent_barrier",
       {[] { simt::launch(divergent_barrier_kernel, cfg("divergent_barrier", 1, 32), buf); },
        "different barriers"}},
      {"abort_barrier_not_reached",
       {[] { simt::launch(early_exit_kernel, cfg("early_exit", 1, 64), buf); },
        "some threads never reach"}},
      {"abort_shuffle_exited_lane",
       {[] { simt::launch(exited_lane_shuffle_kernel, cfg("exited_lane", 1, 32), buf); },
        "mask 0xffffffff names"}},
      {"abort_shuffle_missing_lane",
       {[] { simt::launch(missing_lane_shuffle_kernel, cfg("missing_lane", 1, 20), buf); },
        "does not exist"}},
      {"abort_deadlock",
       {[] { simt::launch(deadlock_kernel, cfg("deadlock", 1, 2), buf); }, "deadlock"}},
      {"abort_livelock",
       {[] {
          buf[0] = 0;
          simt::launch(livelock_kernel, cfg("livelock", 1, 4), buf);
        },
        "livelock"}},
      {"abort_ld_of_shared",
       {[] {
          simt::launch(ld_of_shared_kernel, cfg("ld_of_shared", 1, 32, 32 * sizeof(int)), buf);
        },
        "simt::ld of shared memory"}},
#if SIMT_HAS_HALF
      {"abort_wmma_misaligned",
       {[] {
          static __half h[16 * 40];
          static float f[256];
          simt::launch(wmma_kernel, cfg("wmma_misaligned", 1, 32, 2 * 16 * 40 * 2 + 1024), h, h,
                       f, 4);
        },
        "not 256-bit aligned"}},
      {"abort_wmma_half_warp",
       {[] {
          static __half h[256];
          static float f[256];
          simt::launch(wmma_half_warp_kernel, cfg("wmma_half_warp", 1, 32, 512), h, h, f, 0);
        },
        "waits in a warp collective"}},
#endif
      {"abort_grid_sync_not_cooperative",
       {[] { simt::launch(grid_sync_plain_kernel, cfg("grid_plain", 2, 32), buf); },
        "not cooperative"}},
  };
}

// Runs `self name` in a child; it must die by SIGABRT with `expect` in stderr.
static void check_abort(const char* argv0, const std::string& name, const char* expect) {
  int fds[2];
  if (pipe(fds) != 0) {
    ++g_failures;
    return;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    execl(argv0, argv0, name.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string err;
  char chunk[4096];
  ssize_t n;
  while ((n = read(fds[0], chunk, sizeof chunk)) > 0) err.append(chunk, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  const bool aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  const bool message = err.find(expect) != std::string::npos;
  if (!aborted || !message) {
    std::fprintf(stderr, "%s: expected SIGABRT with \"%s\"; got status %d, stderr:\n%s\n",
                 name.c_str(), expect, status, err.c_str());
    ++g_failures;
  } else {
    std::printf("  %s: aborted as expected\n", name.c_str());
  }
}

int main(int argc, char** argv) {
  const std::map<std::string, void (*)()> cases = {
      {"exchange", test_exchange},   {"transpose", test_transpose},
      {"shuffles", test_shuffles},   {"divergent_shuffle", test_divergent_shuffle},
      {"votes", test_votes},         {"reduce", test_reduce},
      {"atomics", test_atomics},     {"grid_sync", test_grid_sync},
      {"launch_limits", test_launch_limits},
      {"counters", test_counters},   {"device_model", test_device_model},
#if SIMT_HAS_HALF
      {"wmma", test_wmma},
#endif
  };
  const auto aborts = abort_cases();
  if (argc == 2) {
    const std::string name = argv[1];
    if (auto it = aborts.find(name); it != aborts.end()) {
      it->second.run();
      std::fprintf(stderr, "%s: the emulator did not abort\n", name.c_str());
      return 3;
    }
    if (auto it = cases.find(name); it != cases.end()) {
      it->second();
      return g_failures == 0 ? 0 : 1;
    }
    std::fprintf(stderr, "unknown case %s\n", name.c_str());
    return 2;
  }
  int n = 0;
  for (const auto& [name, fn] : cases) {
    const int before = g_failures;
    fn();
    std::printf("  %s: %s\n", name.c_str(), g_failures == before ? "ok" : "FAILED");
    ++n;
  }
  for (const auto& [name, c] : aborts) {
    check_abort(argv[0], name, c.expect);
    ++n;
  }
  std::printf("%d emulator cases, %d failure(s)\n", n, g_failures);
  return g_failures == 0 ? 0 : 1;
}
