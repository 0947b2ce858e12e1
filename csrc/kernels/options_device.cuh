// Fused per-step CUDA kernels of the layers with options beyond torch.nn (layer
// normalisation, zoneout, recurrent dropout), written against csrc/simt/simt.h like
// rnn_device.cuh: nvcc compiles them for the GPU and the host compiler for the SIMT
// emulator. The formulas are rnnfast/reference.py's; the workspace layout (ws, one row
// of ws_ld values per batch row) is csrc/core/options.h's.
//
// Legend: R rows active in this step, H hidden size, P output size (proj_size or H),
// G gates per unit (LSTM 4, GRU 3). Pointers are to row-major storage, the step's rows are
// rows [0, R). T is float or double (the operators run the half types on float32 copies).
//
// Launch shape of the row kernels: one block per batch row (grid-stride over rows), with
// row_threads(n) threads, a multiple of the warp size; thread k owns columns k, k +
// blockDim.x, ... of every row-wide pass, so a layer normalisation's moments and its
// output need no barrier beyond those inside block_sum. Each block needs
// kRowSharedSlots values of dynamic shared memory. The elementwise kernels are
// grid-stride like rnn_device.cuh's.
//
// Masks: zoneout masks are bool, true keeps the previous state; without a mask the
// evaluation form mixes with the probability zp (zp 0: no zoneout).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "rnn_device.cuh"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

constexpr int kRowThreadsMax = 256;
constexpr int kRowSharedSlots = kRowThreadsMax / 32 + 1;

// Threads of a row kernel for rows of n values: a multiple of 32, at most kRowThreadsMax.
inline int row_threads(int64_t n) {
  const int64_t warps = (n + 31) / 32;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(warps, 1) * 32, kRowThreadsMax));
}

SIMT_DEVICE float rsqrt_of(float v) { return 1.0f / sqrtf(v); }
SIMT_DEVICE double rsqrt_of(double v) { return 1.0 / ::sqrt(v); }

// Sum of v over the block's threads, returned to every thread, in a fixed order (a
// shuffle tree in each warp, then one over the warps' sums): the same bits on every run.
// Every thread of the block must call it; smem holds kRowSharedSlots values.
template <typename T>
SIMT_DEVICE T block_sum(T v, T* smem) {
  constexpr unsigned kFull = 0xffffffffu;
  for (int off = warpSize / 2; off > 0; off /= 2) v += __shfl_down_sync(kFull, v, off);
  const int lane = static_cast<int>(threadIdx.x) % warpSize;
  const int warp = static_cast<int>(threadIdx.x) / warpSize;
  const int warps = static_cast<int>(blockDim.x) / warpSize;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? smem[lane] : T(0);
    for (int off = warpSize / 2; off > 0; off /= 2) v += __shfl_down_sync(kFull, v, off);
    if (lane == 0) smem[kRowSharedSlots - 1] = v;
  }
  __syncthreads();
  // The next call writes the warp slots only, and its total after a barrier every thread
  // reaches after reading this one: no barrier needed here.
  return smem[kRowSharedSlots - 1];
}

// Mean and 1 / sqrt(biased variance + 1e-5) of v[0, n) (this block's row), two passes.
template <typename T>
SIMT_DEVICE void row_moments(const T* v, int64_t n, T* smem, T& mean, T& rstd) {
  T s = T(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) s += v[k];
  mean = block_sum(s, smem) / static_cast<T>(n);
  T q = T(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) q += (v[k] - mean) * (v[k] - mean);
  rstd = rsqrt_of(block_sum(q, smem) / static_cast<T>(n) + T(1e-5));
}

// The gradient of a layer normalisation's input from the gradient dy of its normalised
// value xh times gamma: dv = rstd * (g - mean(g) - xh * mean(g * xh)), g = gamma * dy, over
// this block's row of n values. dv may be dy.
template <typename T>
SIMT_DEVICE void row_norm_backward(const T* dy, const T* gamma, const T* xh, T rstd, int64_t n,
                                   T* dv, T* smem) {
  T sg = T(0), sgx = T(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const T g = gamma[k] * dy[k];
    sg += g;
    sgx += g * xh[k];
  }
  const T mg = block_sum(sg, smem) / static_cast<T>(n);
  const T mgx = block_sum(sgx, smem) / static_cast<T>(n);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x)
    dv[k] = rstd * (gamma[k] * dy[k] - mg - xh[k] * mgx);
}

// zoneout(prev, next) of element e: the mask m (true keeps prev), or the mix with zp.
template <typename T>
SIMT_DEVICE T zone(T prev, T next, const bool* m, int64_t e, T zp) {
  if (m != nullptr) return m[e] ? prev : next;
  return zp != T(0) ? zp * prev + (T(1) - zp) * next : next;
}

// Backward of zoneout for a gradient d of the zoned-out state: the part dt that reaches
// the new value and the part dkeep that reaches the previous state.
template <typename T>
SIMT_DEVICE void unzone(T d, const bool* m, int64_t e, T zp, T& dt, T& dkeep) {
  if (m != nullptr) {
    dt = m[e] ? T(0) : d;
    dkeep = m[e] ? d : T(0);
  } else {
    dt = (T(1) - zp) * d;
    dkeep = zp * d;
  }
}

// ------------------------------------------------------------------ forward

// The input side of every row with layer normalisation: v = LN(v) * gamma (+ b1) (+ b2),
// saving the normalised row and its rstd.
template <typename T>
struct OptionInputRows {
  int64_t N = 0, GH = 0;
  T* v = nullptr;             // [N, GH] in: X W_ih^T; out: the input side of the gates
  const T* gamma = nullptr;   // [GH]
  const T* b1 = nullptr;      // [GH] b_ih, or null
  const T* b2 = nullptr;      // [GH] LSTM b_hh, or null
  T* xhat = nullptr;          // [N, ld] out: the normalised rows (row stride ld), or null
  T* rstd = nullptr;          // [N, ld] out: rstd of each row (row stride ld), or null
  int64_t ld = 0;
};

template <typename T>
__global__ void option_input_rows(OptionInputRows<T> p) {
  T* smem = simt::dynamic_shared<T>();
  for (int64_t row = blockIdx.x; row < p.N; row += gridDim.x) {
    T* v = p.v + row * p.GH;
    T mean, rstd;
    row_moments(v, p.GH, smem, mean, rstd);
    for (int64_t k = threadIdx.x; k < p.GH; k += blockDim.x) {
      const T xh = (v[k] - mean) * rstd;
      if (p.xhat != nullptr) p.xhat[row * p.ld + k] = xh;
      T a = xh * p.gamma[k];
      if (p.b1 != nullptr) a += p.b1[k];
      if (p.b2 != nullptr) a += p.b2[k];
      v[k] = a;
    }
    if (p.rstd != nullptr && threadIdx.x == 0) p.rstd[row * p.ld] = rstd;
  }
}

template <typename T>
struct LstmOptionsForwardStep {
  int64_t R = 0, H = 0;
  const T* gx = nullptr;      // [R, 4H] input side (normalised, with b_ih + b_hh)
  T* gh = nullptr;            // [R, 4H] in: (m * h_{t-1}) W_hh^T; out: the activated gates
  const T* ln_hh = nullptr;   // [4H] gamma of the recurrent LN, or null (no LN)
  const T* ln_c = nullptr;    // [H] gamma and beta of the cell LN (with ln_hh)
  const T* ln_c_b = nullptr;
  T* c = nullptr;             // [R, H] in c_{t-1}, out c_t (zoned out)
  const bool* zc = nullptr;   // [R, H] zoneout mask of c, or null (then zp)
  const bool* zh = nullptr;   // [R, H] zoneout mask of h (no projection), or null
  T zp = T(0);
  T* cn = nullptr;            // [R, H] scratch: c~_t, then LN(c~_t)
  T* r = nullptr;             // [R, H] out with a projection: o tanh(LN c~), else null
  T* h = nullptr;             // [R, H] no projection: in h_{t-1}, out h_t (zoned out)
  T* y = nullptr;             // [R, H] no projection: out h_t (the output rows)
  T* hm = nullptr;            // [R, H] no projection: out h_t * rec, or null
  const T* rec = nullptr;     // [R, H] the recurrent dropout mask (with hm)
  T* ws = nullptr;            // [R, ws_ld] out: saved rows, or null (inference)
  int64_t ws_ld = 0;
  T* cells = nullptr;         // [R, H] out: c_t, or null
};

template <typename T>
__global__ void lstm_options_forward_step(LstmOptionsForwardStep<T> p) {
  const int64_t H = p.H, GH = 4 * H;
  T* smem = simt::dynamic_shared<T>();
  for (int64_t b = blockIdx.x; b < p.R; b += gridDim.x) {
    T* g = p.gh + b * GH;
    const T* x = p.gx + b * GH;
    T* ws = p.ws != nullptr ? p.ws + b * p.ws_ld : nullptr;
    T* cn = p.cn + b * H;
    if (p.ln_hh != nullptr) {
      T mean, rstd;
      row_moments(g, GH, smem, mean, rstd);
      for (int64_t k = threadIdx.x; k < GH; k += blockDim.x) {
        const T xh = (g[k] - mean) * rstd;
        if (ws != nullptr) ws[5 * H + k] = xh;
        g[k] = xh * p.ln_hh[k];
      }
      if (ws != nullptr && threadIdx.x == 0) ws[13 * H] = rstd;
      __syncthreads();  // a unit's four gates come from other threads' columns
    }
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      const int64_t e = b * H + j;
      const T i = DeviceAct::sigmoid(g[j] + x[j]);
      const T f = DeviceAct::sigmoid(g[H + j] + x[H + j]);
      const T gg = DeviceAct::tanh(g[2 * H + j] + x[2 * H + j]);
      const T o = DeviceAct::sigmoid(g[3 * H + j] + x[3 * H + j]);
      const T cnew = f * p.c[e] + i * gg;
      g[j] = i;
      g[H + j] = f;
      g[2 * H + j] = gg;
      g[3 * H + j] = o;
      if (ws != nullptr) {
        ws[j] = i;
        ws[H + j] = f;
        ws[2 * H + j] = gg;
        ws[3 * H + j] = o;
      }
      const T c = zone(p.c[e], cnew, p.zc, e, p.zp);
      p.c[e] = c;
      if (p.cells != nullptr) p.cells[e] = c;
      cn[j] = cnew;
    }
    if (p.ln_c != nullptr) {
      T mean, rstd;
      row_moments(cn, H, smem, mean, rstd);
      for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
        const T xh = (cn[j] - mean) * rstd;
        if (ws != nullptr) ws[4 * H + j] = xh;
        cn[j] = xh * p.ln_c[j] + p.ln_c_b[j];
      }
      if (ws != nullptr && threadIdx.x == 0) ws[13 * H + 2] = rstd;
    } else if (ws != nullptr) {
      for (int64_t j = threadIdx.x; j < H; j += blockDim.x) ws[4 * H + j] = cn[j];
    }
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      const int64_t e = b * H + j;
      const T r = g[3 * H + j] * DeviceAct::tanh(cn[j]);
      if (p.r != nullptr) {
        p.r[e] = r;
      } else {
        const T h = zone(p.h[e], r, p.zh, e, p.zp);
        p.h[e] = h;
        p.y[e] = h;
        if (p.hm != nullptr) p.hm[e] = h * p.rec[e];
      }
    }
  }
}

// h_t = zoneout(h_{t-1}, h~_t) elementwise over [R, P] (the LSTM with a projection, after
// h~_t = r W_hr^T was written to y).
template <typename T>
struct ZoneoutRows {
  int64_t R = 0, P = 0;
  T* h = nullptr;            // [R, P] in h_{t-1}, out h_t
  T* y = nullptr;            // [R, P] in h~_t, out h_t
  const bool* zh = nullptr;  // [R, P] or null (then zp)
  T zp = T(0);
  T* hm = nullptr;           // [R, P] out h_t * rec, or null
  const T* rec = nullptr;
};

template <typename T>
__global__ void zoneout_rows(ZoneoutRows<T> p) {
  const int64_t n = p.R * p.P;
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const T h = zone(p.h[e], p.y[e], p.zh, e, p.zp);
    p.h[e] = h;
    p.y[e] = h;
    if (p.hm != nullptr) p.hm[e] = h * p.rec[e];
  }
}

template <typename T>
struct GruOptionsForwardStep {
  int64_t R = 0, H = 0;
  const T* gx = nullptr;      // [R, 3H] input side (normalised, with b_ih)
  T* gh = nullptr;            // [R, 3H] in: (m * h_{t-1}) W_hh^T; clobbered
  const T* ln_hh = nullptr;   // [3H] or null (no LN)
  const T* b_hh = nullptr;    // [3H] or null, added after the LN
  T* h = nullptr;             // [R, H] in h_{t-1}, out h_t (zoned out)
  const bool* zh = nullptr;   // [R, H] or null (then zp)
  T zp = T(0);
  T* y = nullptr;             // [R, H] out: h_t
  T* hm = nullptr;            // [R, H] out: h_t * rec, or null
  const T* rec = nullptr;
  T* ws = nullptr;            // [R, ws_ld] out, or null
  int64_t ws_ld = 0;
};

template <typename T>
__global__ void gru_options_forward_step(GruOptionsForwardStep<T> p) {
  const int64_t H = p.H, GH = 3 * H;
  T* smem = simt::dynamic_shared<T>();
  for (int64_t b = blockIdx.x; b < p.R; b += gridDim.x) {
    T* g = p.gh + b * GH;
    const T* x = p.gx + b * GH;
    T* ws = p.ws != nullptr ? p.ws + b * p.ws_ld : nullptr;
    if (p.ln_hh != nullptr) {
      T mean, rstd;
      row_moments(g, GH, smem, mean, rstd);
      for (int64_t k = threadIdx.x; k < GH; k += blockDim.x) {
        const T xh = (g[k] - mean) * rstd;
        if (ws != nullptr) ws[4 * H + k] = xh;
        T a = xh * p.ln_hh[k];
        if (p.b_hh != nullptr) a += p.b_hh[k];
        g[k] = a;
      }
      if (ws != nullptr && threadIdx.x == 0) ws[10 * H] = rstd;
    } else if (p.b_hh != nullptr) {
      for (int64_t k = threadIdx.x; k < GH; k += blockDim.x) g[k] += p.b_hh[k];
    }
    if (p.ln_hh != nullptr || p.b_hh != nullptr) __syncthreads();
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      const int64_t e = b * H + j;
      const T r = DeviceAct::sigmoid(x[j] + g[j]);
      const T z = DeviceAct::sigmoid(x[H + j] + g[H + j]);
      const T n = DeviceAct::tanh(x[2 * H + j] + r * g[2 * H + j]);
      const T hnew = (T(1) - z) * n + z * p.h[e];
      if (ws != nullptr) {
        ws[j] = r;
        ws[H + j] = z;
        ws[2 * H + j] = n;
        ws[3 * H + j] = g[2 * H + j];
      }
      const T h = zone(p.h[e], hnew, p.zh, e, p.zp);
      p.h[e] = h;
      p.y[e] = h;
      if (p.hm != nullptr) p.hm[e] = h * p.rec[e];
    }
  }
}

// ------------------------------------------------------------------ backward

// dh += dy; dt = the part of dh that reaches h~_t (written to dt), dh keeps the part that
// reaches h_{t-1} directly: zoneout's backward, elementwise over [R, P] (the LSTM with a
// projection, before dr = dt W_hr).
template <typename T>
struct UnzoneRows {
  int64_t R = 0, P = 0;
  T* dh = nullptr;           // [R, P] in dL/dh_t (state), out its zoneout part
  const T* dy = nullptr;     // [R, P] dL/d output rows, or null
  const bool* zh = nullptr;  // [R, P] or null (then zp)
  T zp = T(0);
  T* dt = nullptr;           // [R, P] out dL/dh~_t
};

template <typename T>
__global__ void unzone_rows(UnzoneRows<T> p) {
  const int64_t n = p.R * p.P;
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const T d = p.dh[e] + (p.dy != nullptr ? p.dy[e] : T(0));
    T dt, dkeep;
    unzone(d, p.zh, e, p.zp, dt, dkeep);
    p.dt[e] = dt;
    p.dh[e] = dkeep;
  }
}

template <typename T>
struct LstmOptionsBackwardStep {
  int64_t R = 0, H = 0;
  const T* ws = nullptr;      // [R, ws_ld] saved rows of this step
  int64_t ws_ld = 0;
  const T* ln_hh = nullptr;   // LN gammas (and the cell LN's beta), or null (no LN)
  const T* ln_c = nullptr;
  const T* ln_c_b = nullptr;
  const T* cprev = nullptr;   // [n_prev, H] c_{t-1} of the rows the previous step had
  const T* cinit = nullptr;   // [R, H] c_0 (rows n_prev and up start from it)
  int64_t n_prev = 0;
  const T* dr = nullptr;      // [R, H] with a projection: dL/dr (r = o tanh LN c~), else null
  T* dh = nullptr;            // [R, H] no projection: in dL/dh_t, out its zoneout part
  const T* dy = nullptr;      // [R, H] no projection: dL/d output rows, or null
  const bool* zh = nullptr;   // [R, H] no projection: or null (then zp)
  T* dc = nullptr;            // [R, H] in dL/dc_t, out dL/dc_{t-1}
  const bool* zc = nullptr;   // [R, H] or null (then zp)
  T zp = T(0);
  T* dg = nullptr;            // [R, 4H] out: dL/d gate pre-activations
  T* dhg = nullptr;           // [R, 4H] out with LN: dL/d(raw recurrent product), else null
  T* dchat = nullptr;         // [R, H] out with LN: dL/d(LN(c~) output), else null
  T* r = nullptr;             // [R, H] out with a projection: r recomputed, else null
  T* dct = nullptr;           // [R, H] scratch
};

template <typename T>
__global__ void lstm_options_backward_step(LstmOptionsBackwardStep<T> p) {
  const int64_t H = p.H, GH = 4 * H;
  T* smem = simt::dynamic_shared<T>();
  for (int64_t b = blockIdx.x; b < p.R; b += gridDim.x) {
    const T* ws = p.ws + b * p.ws_ld;
    T* dg = p.dg + b * GH;
    T* dct = p.dct + b * H;
    const bool ln = p.ln_hh != nullptr;
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      const int64_t e = b * H + j;
      T dr;
      if (p.dr != nullptr) {
        dr = p.dr[e];
      } else {
        T dkeep;
        unzone(p.dh[e] + (p.dy != nullptr ? p.dy[e] : T(0)), p.zh, e, p.zp, dr, dkeep);
        p.dh[e] = dkeep;
      }
      const T o = ws[3 * H + j];
      const T chat = ln ? ws[4 * H + j] * p.ln_c[j] + p.ln_c_b[j] : ws[4 * H + j];
      const T th = DeviceAct::tanh(chat);
      if (p.r != nullptr) p.r[e] = o * th;
      dg[3 * H + j] = dr * th * o * (T(1) - o);
      const T dch = dr * o * (T(1) - th * th);
      if (ln) {
        p.dchat[e] = dch;
      } else {
        dct[j] = dch;
      }
    }
    if (ln) row_norm_backward(p.dchat + b * H, p.ln_c, ws + 4 * H, ws[13 * H + 2], H, dct, smem);
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      const int64_t e = b * H + j;
      const T keep = p.zc != nullptr ? (p.zc[e] ? T(1) : T(0)) : p.zp;
      const T i = ws[j], f = ws[H + j], g = ws[2 * H + j];
      const T cp = b < p.n_prev ? p.cprev[e] : p.cinit[e];
      const T dcn = (T(1) - keep) * p.dc[e] + dct[j];  // dL/dc~_t
      p.dc[e] = keep * p.dc[e] + dcn * f;               // dL/dc_{t-1}
      dg[j] = dcn * g * i * (T(1) - i);
      dg[H + j] = dcn * cp * f * (T(1) - f);
      dg[2 * H + j] = dcn * i * (T(1) - g * g);
    }
    if (ln) {
      __syncthreads();  // the LN's columns were written by other threads
      row_norm_backward(dg, p.ln_hh, ws + 5 * H, ws[13 * H], GH, p.dhg + b * GH, smem);
    }
  }
}

template <typename T>
struct GruOptionsBackwardStep {
  int64_t R = 0, H = 0;
  const T* ws = nullptr;      // [R, ws_ld] saved rows of this step
  int64_t ws_ld = 0;
  const T* ln_hh = nullptr;   // [3H] or null (no LN)
  const T* hprev = nullptr;   // [n_prev, H] h_{t-1} of the rows the previous step had
  const T* hinit = nullptr;   // [R, H] h_0 (rows n_prev and up start from it)
  int64_t n_prev = 0;
  T* dh = nullptr;            // [R, H] in dL/dh_t, out the part of dL/dh_{t-1} not through W_hh
  const T* dy = nullptr;      // [R, H] or null
  const bool* zh = nullptr;   // [R, H] or null (then zp)
  T zp = T(0);
  T* dgx = nullptr;           // [R, 3H] out: dL/d(input side after LN)
  T* dgh = nullptr;           // [R, 3H] out: dL/d(recurrent side after LN)
  T* dhg = nullptr;           // [R, 3H] out with LN: dL/d(raw recurrent product), else null
};

template <typename T>
__global__ void gru_options_backward_step(GruOptionsBackwardStep<T> p) {
  const int64_t H = p.H, GH = 3 * H;
  T* smem = simt::dynamic_shared<T>();
  for (int64_t b = blockIdx.x; b < p.R; b += gridDim.x) {
    const T* ws = p.ws + b * p.ws_ld;
    T* dx = p.dgx + b * GH;
    T* dg = p.dgh + b * GH;
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      const int64_t e = b * H + j;
      T dt, dkeep;
      unzone(p.dh[e] + (p.dy != nullptr ? p.dy[e] : T(0)), p.zh, e, p.zp, dt, dkeep);
      const T r = ws[j], z = ws[H + j], n = ws[2 * H + j], hn = ws[3 * H + j];
      const T hp = b < p.n_prev ? p.hprev[e] : p.hinit[e];
      const T dn = dt * (T(1) - z) * (T(1) - n * n);
      const T dz = dt * (hp - n) * z * (T(1) - z);
      const T dr = dn * hn * r * (T(1) - r);
      p.dh[e] = dkeep + dt * z;
      dx[j] = dr;
      dx[H + j] = dz;
      dx[2 * H + j] = dn;
      dg[j] = dr;
      dg[H + j] = dz;
      dg[2 * H + j] = dn * r;
    }
    if (p.ln_hh != nullptr) {
      __syncthreads();  // the LN's columns were written by other threads
      row_norm_backward(dg, p.ln_hh, ws + 4 * H, ws[10 * H], GH, p.dhg + b * GH, smem);
    }
  }
}

// The input side's LN backward of every row, in place: dv = dL/d(X W_ih^T) from dL/d(its
// normalised value times gamma).
template <typename T>
struct OptionInputRowsBackward {
  int64_t N = 0, GH = 0;
  T* dv = nullptr;            // [N, GH] in/out
  const T* gamma = nullptr;   // [GH]
  const T* xhat = nullptr;    // [N, ld] the saved normalised rows, and their rstd [N, ld]
  const T* rstd = nullptr;
  int64_t ld = 0;
};

template <typename T>
__global__ void option_input_rows_backward(OptionInputRowsBackward<T> p) {
  T* smem = simt::dynamic_shared<T>();
  for (int64_t row = blockIdx.x; row < p.N; row += gridDim.x) {
    T* dv = p.dv + row * p.GH;
    row_norm_backward(dv, p.gamma, p.xhat + row * p.ld, p.rstd[row * p.ld], p.GH, dv, smem);
  }
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
