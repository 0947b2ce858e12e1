// The persistent recurrence: one cooperative launch runs every time step of one layer
// in one direction, with the block's slice of the recurrent weights resident in shared
// memory for the whole sequence (read from global memory once), instead of one GEMM
// (which re-reads all of W_hh) and one pointwise launch per step. Written against
// csrc/simt/simt.h, like rnn_device.cuh: nvcc compiles it for the GPU, the host compiler
// for the SIMT emulator, where its global-memory traffic is counted.
//
// Legend: T steps, B rows of the state (batch), N rows of the sequence (sum of the
// per-step batch sizes), H hidden size, P state width (proj_size, else H), G gates per
// unit (LSTM 4, GRU 3, RNN 1), U hidden units per block, V projection outputs per block
// (LSTM with proj_size), nb blocks (gridDim.x). Block j owns hidden units
// [j*U, min((j+1)*U, H)) with all G gate rows of each, and (projection) outputs
// [j*V, min((j+1)*V, P)).
//
// Per step (in this direction's processing order), in every block:
//   1. stage h_{t-1} of the step's R rows in shared memory: the previous step's output
//      rows (written by every block in the previous step) or h_0 for rows the previous
//      step did not have (packed sequences, either direction);
//   2. the block's recurrent products: R*G*U dot products of length P, a group of lanes
//      each (block_dots: lanes stride over P, a fixed shuffle tree, deterministic),
//      accumulated in Acc;
//   3. the fused cell update (cell_math.h) of its units, the cell state kept in shared
//      memory for all steps; writes its columns of the output rows and what backward
//      needs (the same saved buffers as the per-step kernels of rnn_device.cuh);
//   4. LSTM with projection: a grid sync, then the block's projection outputs
//      (R*V dot products of length H with its rows of W_hr, also resident);
//   5. a grid sync, after which every block may read the step's output rows.
// The final states are written after the last step's grid sync (h_0 is read in place
// until then).
//
// Shared memory (PersistentLayout, the same arithmetic on host and device), in order:
//   w  [G*U, P] T    the block's rows of W_hh: row g*U + u is W_hh row g*H + j*U + u
//   wr [V, H]   T    its rows of W_hr (projection)
// (w and wr rows padded by the lanes of a dot product, dot_lanes(P) and dot_lanes(H)
// elements, so that the lane groups of a warp, reading neighbouring rows, start in
// different banks);
//   hs [B, P]   T    h_{t-1} of the step's rows
//   rs [B, H]   T    r = o * tanh(c) of the step's rows (projection)
//   pre [B, G*U] A   the recurrent pre-activations (GRU: with b_hh)
//   cs [B, U]   A    the cell state of its units (LSTM)
//   hl [B, max(U, V)] T  the last output of each row in its columns (the final h)
//   bh [G*U]    A    its part of b_hh (GRU)
//   ctl [4] int64    the step's R, first row, rows with a previous step, its first row
#pragma once

#include <cstdint>

#include "../simt/simt.h"
#include "cell_math.h"
#include "rnn_device.cuh"

namespace rnnfast {
namespace RNNFAST_DEVICE_NS {

// Cell kinds, numbered as core::CellKind.
constexpr int kKindLstm = 0, kKindGru = 1, kKindRnnTanh = 2, kKindRnnRelu = 3;

SIMT_HD int64_t kind_gates(int kind) { return kind == kKindLstm ? 4 : kind == kKindGru ? 3 : 1; }

// Lanes that share one dot product of length n: a power of two in [1, 32], about n / 8
// (each lane sums at least 8 products where n allows), so short rows need few shuffles.
SIMT_HD int dot_lanes(int64_t n) {
  int lanes = 1;
  while (lanes < 32 && lanes * 16 <= n) lanes *= 2;
  return lanes;
}

// Byte offsets of the shared-memory arrays above; each starts on a 16-byte boundary.
struct PersistentLayout {
  int64_t w = 0, wr = 0, hs = 0, rs = 0, pre = 0, cs = 0, hl = 0, bh = 0, ctl = 0, bytes = 0;
  PersistentLayout() = default;
  SIMT_HD PersistentLayout(int kind, bool proj, int64_t B, int64_t H, int64_t P, int64_t U,
                           int64_t V, int64_t t_size, int64_t a_size) {
    const int64_t G = kind_gates(kind);
    int64_t at = 0;
    auto take = [&at](int64_t bytes) {
      const int64_t start = at;
      at += (bytes + 15) / 16 * 16;
      return start;
    };
    w = take(G * U * (P + dot_lanes(P)) * t_size);
    wr = take(proj ? V * (H + dot_lanes(H)) * t_size : 0);
    hs = take(B * P * t_size);
    rs = take(proj ? B * H * t_size : 0);
    pre = take(B * G * U * a_size);
    cs = take(kind == kKindLstm ? B * U * a_size : 0);
    hl = take(B * (U > V ? U : V) * t_size);
    bh = take(kind == kKindGru ? G * U * a_size : 0);
    ctl = take(4 * static_cast<int64_t>(sizeof(int64_t)));
    bytes = at;
  }
};

template <typename T>
struct PersistentForward {
  int64_t steps = 0, B = 0, H = 0, P = 0;
  int64_t U = 0, V = 0;         // units and projection outputs per block
  bool reverse = false;
  const int64_t* bs = nullptr;  // [T] rows per step (device memory), or null: all B
  const int64_t* off = nullptr; // [T] first row of each step, with bs
  const T* gx = nullptr;        // [N, G*H] input projection (with the biases but GRU's b_hh)
  const T* w_hh = nullptr;      // [G*H, P]
  const T* b_hh = nullptr;      // [G*H] GRU with bias, else null
  const T* w_hr = nullptr;      // [P, H] LSTM with projection, else null
  T* y = nullptr;               // [N, P] out: the output rows
  T* h = nullptr;               // [B, P] in: h_0; out: h_n
  Acc<T>* c = nullptr;          // [B, H] LSTM: in c_0, out c_n
  Acc<T>* saved0 = nullptr;     // LSTM [N, 4H] gates / GRU [N, 4H] workspace (training), or null
  Acc<T>* saved1 = nullptr;     // LSTM [N, H] cells (training), or null
  T* r = nullptr;               // [B, H] scratch: r of the step's rows (projection)
  bool grid_syncs = true;       // false only in the emulator's test of a missing grid sync
};

// The block's n dot products of length len, item i being rows(i) = (a, b), two rows in
// shared memory: groups of `lanes` lanes (dot_lanes(len)) take one item each, every warp
// of the block in turn, lanes striding over the row; the group's sum is a fixed shuffle
// tree (deterministic), and its first lane calls out(i, sum). Every thread of the block
// calls it (the shuffles name the whole warp).
template <typename A, typename T, typename Rows, typename Out>
SIMT_DEVICE void block_dots(int64_t n, int64_t len, int lanes, const Rows& rows, const Out& out) {
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int per_warp = 32 / lanes, k0 = lane % lanes;
  const int64_t stride = static_cast<int64_t>(blockDim.x / 32) * per_warp;
  for (int64_t base = static_cast<int64_t>(warp) * per_warp; base < n; base += stride) {
    const int64_t item = base + lane / lanes;
    A s = A(0);
    if (item < n) {
      const T* a;
      const T* b;
      rows(item, a, b);
      for (int64_t k = k0; k < len; k += lanes) s += to<A>(a[k]) * to<A>(b[k]);
    }
    for (int d = lanes / 2; d > 0; d /= 2) s += __shfl_xor_sync(0xffffffffu, s, d, lanes);
    if (item < n && k0 == 0) out(item, s);
  }
}

template <typename T, int Kind>
__global__ void persistent_forward(PersistentForward<T> p) {
  using A = Acc<T>;
  constexpr int64_t G = Kind == kKindLstm ? 4 : Kind == kKindGru ? 3 : 1;
  const bool proj = p.w_hr != nullptr;
  const int64_t B = p.B, H = p.H, P = p.P, U = p.U, V = p.V, GH = G * H;
  const PersistentLayout lay(Kind, proj, B, H, P, U, V, sizeof(T), sizeof(A));
  unsigned char* smem = simt::dynamic_shared<unsigned char>();
  T* w = reinterpret_cast<T*>(smem + lay.w);
  T* wr = reinterpret_cast<T*>(smem + lay.wr);
  T* hs = reinterpret_cast<T*>(smem + lay.hs);
  T* rs = reinterpret_cast<T*>(smem + lay.rs);
  A* pre = reinterpret_cast<A*>(smem + lay.pre);
  A* cs = reinterpret_cast<A*>(smem + lay.cs);
  T* hl = reinterpret_cast<T*>(smem + lay.hl);
  A* bh = reinterpret_cast<A*>(smem + lay.bh);
  int64_t* ctl = reinterpret_cast<int64_t*>(smem + lay.ctl);

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int lanes_p = dot_lanes(P), lanes_h = dot_lanes(H);
  const int64_t ldw = P + lanes_p, ldwr = H + lanes_h;  // padded rows: see PersistentLayout
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * U;
  const int64_t nu = H - u0 < U ? H - u0 : U;  // >= 1: the grid has ceil(H / U) blocks
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * V;
  const int64_t nv = proj ? (P - v0 < V ? (P - v0 > 0 ? P - v0 : 0) : V) : 0;
  const int64_t X = U > V ? U : V;            // hl's row stride
  const int64_t col0 = proj ? v0 : u0, ncols = proj ? nv : nu;

  // The resident weights and the state of the block's units: read once.
  for (int64_t e = tid; e < G * nu * P; e += nthreads) {
    const int64_t g = e / (nu * P), rest = e - g * nu * P, u = rest / P, k = rest - u * P;
    w[(g * U + u) * ldw + k] = simt::ldg(p.w_hh + (g * H + u0 + u) * P + k);
  }
  for (int64_t e = tid; e < nv * H; e += nthreads) {
    const int64_t v = e / H, k = e - v * H;
    wr[v * ldwr + k] = simt::ldg(p.w_hr + (v0 + v) * H + k);
  }
  if (Kind == kKindLstm) {
    for (int64_t e = tid; e < B * nu; e += nthreads) {
      const int64_t b = e / nu, u = e - b * nu;
      cs[b * U + u] = simt::ld(p.c + b * H + u0 + u);
    }
  }
  if (Kind == kKindGru) {
    for (int64_t e = tid; e < G * nu; e += nthreads) {
      const int64_t g = e / nu, u = e - g * nu;
      bh[g * U + u] = p.b_hh != nullptr ? load<A>(p.b_hh + g * H + u0 + u) : A(0);
    }
  }
  for (int64_t e = tid; e < B * ncols; e += nthreads) {
    const int64_t b = e / ncols, j = e - b * ncols;
    hl[b * X + j] = simt::ld(p.h + b * P + col0 + j);
  }

  for (int64_t step = 0; step < p.steps; ++step) {
    const int64_t t = p.reverse ? p.steps - 1 - step : step;
    const int64_t tp = p.reverse ? (t + 1 < p.steps ? t + 1 : -1) : t - 1;
    int64_t R, o, n_prev, o_prev;
    if (p.bs == nullptr) {
      R = B;
      o = t * B;
      n_prev = tp >= 0 ? B : 0;
      o_prev = tp * B;
    } else {
      __syncthreads();  // every thread has read the previous step's ctl
      if (tid == 0) {
        ctl[0] = simt::ld(p.bs + t);
        ctl[1] = simt::ld(p.off + t);
        const int64_t bp = tp >= 0 ? simt::ld(p.bs + tp) : 0;
        ctl[2] = bp < ctl[0] ? bp : ctl[0];
        ctl[3] = tp >= 0 ? simt::ld(p.off + tp) : 0;
      }
      __syncthreads();
      R = ctl[0], o = ctl[1], n_prev = ctl[2], o_prev = ctl[3];
    }
    if (R == 0) continue;  // the same in every block

    // 1. h_{t-1} of the step's rows.
    for (int64_t e = tid; e < R * P; e += nthreads) {
      const int64_t b = e / P, k = e - b * P;
      hs[e] = b < n_prev ? simt::ld(p.y + (o_prev + b) * P + k) : simt::ld(p.h + b * P + k);
    }
    __syncthreads();

    // 2. The recurrent pre-activations of the block's units.
    block_dots<A, T>(
        R * G * nu, P, lanes_p,
        [&](int64_t item, const T*& wa, const T*& hb) {
          const int64_t b = item / (G * nu), gu = item - b * G * nu, g = gu / nu, u = gu - g * nu;
          wa = w + (g * U + u) * ldw;
          hb = hs + b * P;
        },
        [&](int64_t item, A sum) {
          const int64_t b = item / (G * nu), gu = item - b * G * nu, g = gu / nu, u = gu - g * nu;
          pre[b * G * U + g * U + u] = Kind == kKindGru ? sum + bh[g * U + u] : sum;
        });
    __syncthreads();

    // 3. The cell update of the block's units.
    for (int64_t e = tid; e < R * nu; e += nthreads) {
      const int64_t b = e / nu, u = e - b * nu, j = u0 + u, row = o + b;
      const T* gxr = p.gx + row * GH + j;
      const A* pr = pre + b * G * U + u;
      if constexpr (Kind == kKindLstm) {
        A gate[4];
        for (int k = 0; k < 4; ++k) gate[k] = load<A>(gxr + k * H) + pr[k * U];
        A c, r;
        cell::lstm_forward_unit<A, DeviceAct>(gate[0], gate[1], gate[2], gate[3], cs[b * U + u],
                                              c, r);
        cs[b * U + u] = c;
        if (proj) {
          store(p.r + b * H + j, r);
        } else {
          store(p.y + row * P + j, r);
          hl[b * X + u] = to<T>(r);
        }
        if (p.saved0 != nullptr) {
          for (int k = 0; k < 4; ++k) simt::st(p.saved0 + row * GH + k * H + j, gate[k]);
          simt::st(p.saved1 + row * H + j, c);
        }
      } else if constexpr (Kind == kKindGru) {
        A xr = load<A>(gxr), xz = load<A>(gxr + H), xn = load<A>(gxr + 2 * H);
        const A hn = pr[2 * U];
        const A h = cell::gru_forward_unit<A, DeviceAct>(xr, xz, xn, pr[0], pr[U], hn,
                                                         to<A>(hs[b * P + j]));
        store(p.y + row * P + j, h);
        hl[b * X + u] = to<T>(h);
        if (p.saved0 != nullptr) {
          A* ws = p.saved0 + row * 4 * H + j;
          simt::st(ws, xr);
          simt::st(ws + H, xz);
          simt::st(ws + 2 * H, xn);
          simt::st(ws + 3 * H, hn);
        }
      } else {
        const A h =
            cell::rnn_forward_unit<A, DeviceAct, Kind == kKindRnnRelu>(load<A>(gxr) + pr[0]);
        store(p.y + row * P + j, h);
        hl[b * X + u] = to<T>(h);
      }
    }

    // 4. The projection: h_t = r W_hr^T, once every block has written its part of r.
    if (proj) {
      if (p.grid_syncs) simt::grid_sync();
      for (int64_t e = tid; e < R * H; e += nthreads) rs[e] = simt::ld(p.r + e);
      __syncthreads();
      block_dots<A, T>(
          R * nv, H, lanes_h,
          [&](int64_t item, const T*& wa, const T*& rb) {
            const int64_t b = item / nv, v = item - b * nv;
            wa = wr + v * ldwr;
            rb = rs + b * H;
          },
          [&](int64_t item, A sum) {
            const int64_t b = item / nv, v = item - b * nv;
            store(p.y + (o + b) * P + v0 + v, sum);
            hl[b * X + v] = to<T>(sum);
          });
    }
    // 5. The step's output rows are complete.
    if (p.grid_syncs) simt::grid_sync();
  }

  // Final states (h_0 is no longer read: every block has passed the last grid sync).
  for (int64_t e = tid; e < B * ncols; e += nthreads) {
    const int64_t b = e / ncols, j = e - b * ncols;
    simt::st(p.h + b * P + col0 + j, hl[b * X + j]);
  }
  if (Kind == kKindLstm) {
    for (int64_t e = tid; e < B * nu; e += nthreads) {
      const int64_t b = e / nu, u = e - b * nu;
      simt::st(p.c + b * H + u0 + u, cs[b * U + u]);
    }
  }
}

// ------------------------------------------------------------------ backward
//
// The persistent backward of one layer in one direction: every step, in the reverse of
// the forward's processing order, in one cooperative launch, each block keeping its
// column slice of W_hh (for dh_{t-1} = dG W_hh) and, with a projection, its column slice
// of W_hr (for dr = dL/dh W_hr) in shared memory. Its outputs are the standard
// algorithm's: the gate gradients of every row (dg; GRU also dgh) and, with a projection,
// dL/dh (DR) and r (Rr) of every row, for the whole-sequence GEMMs after the launch; and
// the gradients of the initial states.
//
// Block j owns hidden units [j*U, ...) as in forward (their cell-state gradient, kept in
// shared memory) and state columns: the same units without a projection, else
// [j*V, ...) of P. It keeps dL/dh of its state columns, for all B rows, in shared memory
// for the whole sequence. Per step:
//   projection only: DR = dL/dh_t + dL/dy_t of its columns to global; grid sync; stage the
//     step's DR rows; dr of its units (R*U dot products of length P);
//   the cell backward of its units (cell_math.h), the gate gradients to global (GRU: and
//     the direct part z * dL/dh_t of its columns kept);
//   grid sync; stage the step's gate gradient rows (R x G*H); dL/dh_{t-1} of its columns
//     (R * columns dot products of length G*H).
// One grid sync a step (two with a projection).
//
// Shared memory (PersistentBackLayout), in order:
//   wt [X, G*H] T   its state columns of W_hh as rows: wt[j][k] = W_hh[k][col0 + j]
//   wrt [U, P]  T   its units' columns of W_hr as rows (projection)
//   gs [B, G*H] T   the step's gate gradients (GRU: the recurrent side: dr, dz, dn * r)
//   ds [B, P]   T   the step's DR rows (projection)
//   drs [B, U]  A   dr of its units (projection)
//   dhs [B, X]  A   dL/dh of its state columns
//   dcs [B, U]  A   dL/dc of its units (LSTM)
//   ctl [4] int64
// with X = U (no projection) or V, rows of wt and wrt padded by a dot's lanes.
struct PersistentBackLayout {
  int64_t wt = 0, wrt = 0, gs = 0, ds = 0, drs = 0, dhs = 0, dcs = 0, ctl = 0, bytes = 0;
  PersistentBackLayout() = default;
  SIMT_HD PersistentBackLayout(int kind, bool proj, int64_t B, int64_t H, int64_t P, int64_t U,
                               int64_t V, int64_t t_size, int64_t a_size) {
    const int64_t GH = kind_gates(kind) * H, X = proj ? V : U;
    int64_t at = 0;
    auto take = [&at](int64_t bytes) {
      const int64_t start = at;
      at += (bytes + 15) / 16 * 16;
      return start;
    };
    wt = take(X * (GH + dot_lanes(GH)) * t_size);
    wrt = take(proj ? U * (P + dot_lanes(P)) * t_size : 0);
    gs = take(B * GH * t_size);
    ds = take(proj ? B * P * t_size : 0);
    drs = take(proj ? B * U * a_size : 0);
    dhs = take(B * X * a_size);
    dcs = take(kind == kKindLstm ? B * U * a_size : 0);
    ctl = take(4 * static_cast<int64_t>(sizeof(int64_t)));
    bytes = at;
  }
};

template <typename T>
struct PersistentBackward {
  int64_t steps = 0, B = 0, H = 0, P = 0;
  int64_t U = 0, V = 0;
  bool reverse = false;          // the forward's direction
  const int64_t* bs = nullptr;   // [T] rows per step (device memory), or null: all B
  const int64_t* off = nullptr;  // [T]
  const T* dy = nullptr;         // [N, P] dL/d output, element (n, k) at n*dy_ld + k*dy_cs, or null
  int64_t dy_ld = 0, dy_cs = 0;
  const T* hx = nullptr;         // [B, P] h_0 (GRU: h_{t-1} of rows that start)
  const Acc<T>* cx = nullptr;    // [B, H] c_0 (LSTM)
  const T* w_hh = nullptr;       // [G*H, P]
  const T* w_hr = nullptr;       // [P, H] or null
  const T* y = nullptr;          // [N, P] forward's output
  const Acc<T>* saved0 = nullptr;  // LSTM gates [N, 4H] / GRU workspace [N, 4H]
  const Acc<T>* saved1 = nullptr;  // LSTM cells [N, H]
  T* dh = nullptr;               // [B, P] in: dL/dh_n; out: dL/dh_0
  Acc<T>* dc = nullptr;          // [B, H] LSTM: in dL/dc_n; out: dL/dc_0
  T* dg = nullptr;               // [N, G*H] out: gate gradients (GRU: of the input side)
  T* dgh = nullptr;              // [N, H] out: GRU's n-gate recurrent-side gradient
  T* dr_rows = nullptr;          // [N, P] out: DR (projection)
  T* r_rows = nullptr;           // [N, H] out: r recomputed (projection)
  bool grid_syncs = true;        // false only in the emulator's test of a missing grid sync
};

template <typename T, int Kind>
__global__ void persistent_backward(PersistentBackward<T> p) {
  using A = Acc<T>;
  constexpr int64_t G = Kind == kKindLstm ? 4 : Kind == kKindGru ? 3 : 1;
  const bool proj = p.w_hr != nullptr;
  const int64_t B = p.B, H = p.H, P = p.P, U = p.U, V = p.V, GH = G * H;
  const int64_t X = proj ? V : U;
  const PersistentBackLayout lay(Kind, proj, B, H, P, U, V, sizeof(T), sizeof(A));
  unsigned char* smem = simt::dynamic_shared<unsigned char>();
  T* wt = reinterpret_cast<T*>(smem + lay.wt);
  T* wrt = reinterpret_cast<T*>(smem + lay.wrt);
  T* gs = reinterpret_cast<T*>(smem + lay.gs);
  T* ds = reinterpret_cast<T*>(smem + lay.ds);
  A* drs = reinterpret_cast<A*>(smem + lay.drs);
  A* dhs = reinterpret_cast<A*>(smem + lay.dhs);
  A* dcs = reinterpret_cast<A*>(smem + lay.dcs);
  int64_t* ctl = reinterpret_cast<int64_t*>(smem + lay.ctl);

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int lanes_g = dot_lanes(GH), lanes_p = dot_lanes(P);
  const int64_t ldt = GH + lanes_g, ldr = P + lanes_p;
  const int64_t u0 = static_cast<int64_t>(blockIdx.x) * U;
  const int64_t nu = H - u0 < U ? H - u0 : U;
  const int64_t col0 = proj ? static_cast<int64_t>(blockIdx.x) * V : u0;
  const int64_t ncols = proj ? (P - col0 < V ? (P - col0 > 0 ? P - col0 : 0) : V) : nu;

  for (int64_t e = tid; e < ncols * GH; e += nthreads) {
    const int64_t k = e / ncols, j = e - k * ncols;  // consecutive threads: consecutive columns
    wt[j * ldt + k] = simt::ldg(p.w_hh + k * P + col0 + j);
  }
  if (proj) {
    for (int64_t e = tid; e < nu * P; e += nthreads) {
      const int64_t q = e / nu, u = e - q * nu;
      wrt[u * ldr + q] = simt::ldg(p.w_hr + q * H + u0 + u);
    }
  }
  for (int64_t e = tid; e < B * ncols; e += nthreads) {
    const int64_t b = e / ncols, j = e - b * ncols;
    dhs[b * X + j] = load<A>(p.dh + b * P + col0 + j);
  }
  if (Kind == kKindLstm) {
    for (int64_t e = tid; e < B * nu; e += nthreads) {
      const int64_t b = e / nu, u = e - b * nu;
      dcs[b * U + u] = simt::ld(p.dc + b * H + u0 + u);
    }
  }
  __syncthreads();

  auto dout = [&](int64_t row, int64_t k) {
    return p.dy != nullptr ? load<A>(p.dy + row * p.dy_ld + k * p.dy_cs) : A(0);
  };

  for (int64_t step = p.steps - 1; step >= 0; --step) {
    const int64_t t = p.reverse ? p.steps - 1 - step : step;
    const int64_t tp = p.reverse ? (t + 1 < p.steps ? t + 1 : -1) : t - 1;
    int64_t R, o, n_prev, o_prev;
    if (p.bs == nullptr) {
      R = B;
      o = t * B;
      n_prev = tp >= 0 ? B : 0;
      o_prev = tp * B;
    } else {
      __syncthreads();
      if (tid == 0) {
        ctl[0] = simt::ld(p.bs + t);
        ctl[1] = simt::ld(p.off + t);
        const int64_t bp = tp >= 0 ? simt::ld(p.bs + tp) : 0;
        ctl[2] = bp < ctl[0] ? bp : ctl[0];
        ctl[3] = tp >= 0 ? simt::ld(p.off + tp) : 0;
      }
      __syncthreads();
      R = ctl[0], o = ctl[1], n_prev = ctl[2], o_prev = ctl[3];
    }
    if (R == 0) continue;

    if (proj) {
      // DR = dL/dh_t + dL/dy_t of the block's columns, for every block's dr.
      for (int64_t e = tid; e < R * ncols; e += nthreads) {
        const int64_t b = e / ncols, j = e - b * ncols;
        store(p.dr_rows + (o + b) * P + col0 + j, dhs[b * X + j] + dout(o + b, col0 + j));
      }
      if (p.grid_syncs) simt::grid_sync();
      for (int64_t e = tid; e < R * P; e += nthreads) ds[e] = simt::ld(p.dr_rows + o * P + e);
      __syncthreads();
      block_dots<A, T>(
          R * nu, P, lanes_p,
          [&](int64_t item, const T*& wa, const T*& db) {
            const int64_t b = item / nu, u = item - b * nu;
            wa = wrt + u * ldr;
            db = ds + b * P;
          },
          [&](int64_t item, A sum) { drs[(item / nu) * U + item % nu] = sum; });
      __syncthreads();
    }

    // The cell backward of the block's units.
    for (int64_t e = tid; e < R * nu; e += nthreads) {
      const int64_t b = e / nu, u = e - b * nu, j = u0 + u, row = o + b;
      if constexpr (Kind == kKindLstm) {
        const A dr = proj ? drs[b * U + u] : dhs[b * X + u] + dout(row, j);
        const A* gates = p.saved0 + row * GH + j;
        const A cprev = simt::ld(b < n_prev ? p.saved1 + (o_prev + b) * H + j : p.cx + b * H + j);
        A dc = dcs[b * U + u], di, df, dgg, do_, r;
        cell::lstm_backward_unit<A, DeviceAct>(simt::ld(gates), simt::ld(gates + H),
                                               simt::ld(gates + 2 * H), simt::ld(gates + 3 * H),
                                               simt::ld(p.saved1 + row * H + j), cprev, dr, dc,
                                               di, df, dgg, do_, r);
        dcs[b * U + u] = dc;
        T* dgr = p.dg + row * GH + j;
        store(dgr, di);
        store(dgr + H, df);
        store(dgr + 2 * H, dgg);
        store(dgr + 3 * H, do_);
        if (proj) store(p.r_rows + row * H + j, r);
      } else if constexpr (Kind == kKindGru) {
        const A dh = dhs[b * X + u] + dout(row, j);
        const A* ws = p.saved0 + row * 4 * H + j;
        const A hprev = load<A>(b < n_prev ? p.y + (o_prev + b) * P + j : p.hx + b * P + j);
        A dxr, dxz, dxn, dhr, dhz, dhn;
        const A direct = cell::gru_backward_unit<A>(simt::ld(ws), simt::ld(ws + H),
                                                    simt::ld(ws + 2 * H), simt::ld(ws + 3 * H),
                                                    hprev, dh, dxr, dxz, dxn, dhr, dhz, dhn);
        dhs[b * X + u] = direct;
        T* dgr = p.dg + row * GH + j;
        store(dgr, dxr);
        store(dgr + H, dxz);
        store(dgr + 2 * H, dxn);
        store(p.dgh + row * H + j, dhn);
      } else {
        const A dh = dhs[b * X + u] + dout(row, j);
        store(p.dg + row * H + j, cell::rnn_backward_unit<A, Kind == kKindRnnRelu>(
                                      load<A>(p.y + row * P + j), dh));
      }
    }
    if (p.grid_syncs) simt::grid_sync();

    // dL/dh_{t-1} of the block's columns: the step's gate gradients times W_hh.
    for (int64_t e = tid; e < R * GH; e += nthreads) {
      const int64_t b = e / GH, k = e - b * GH;
      if (Kind == kKindGru && k >= 2 * H) {
        gs[e] = simt::ld(p.dgh + (o + b) * H + k - 2 * H);
      } else {
        gs[e] = simt::ld(p.dg + (o + b) * GH + k);
      }
    }
    __syncthreads();
    block_dots<A, T>(
        R * ncols, GH, lanes_g,
        [&](int64_t item, const T*& wa, const T*& gb) {
          const int64_t b = item / ncols, j = item - b * ncols;
          wa = wt + j * ldt;
          gb = gs + b * GH;
        },
        [&](int64_t item, A sum) {
          const int64_t b = item / ncols, j = item - b * ncols;
          // GRU: plus the direct part z * dL/dh_t, which its own thread left there.
          dhs[b * X + j] = Kind == kKindGru ? dhs[b * X + j] + sum : sum;
        });
    __syncthreads();
  }

  for (int64_t e = tid; e < B * ncols; e += nthreads) {
    const int64_t b = e / ncols, j = e - b * ncols;
    store(p.dh + b * P + col0 + j, dhs[b * X + j]);
  }
  if (Kind == kKindLstm) {
    for (int64_t e = tid; e < B * nu; e += nthreads) {
      const int64_t b = e / nu, u = e - b * nu;
      simt::st(p.dc + b * H + u0 + u, dcs[b * U + u]);
    }
  }
}

}  // namespace RNNFAST_DEVICE_NS
}  // namespace rnnfast
