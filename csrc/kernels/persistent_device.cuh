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
//   2. the block's recurrent products, R x G*U of length P (block_product): on tensor
//      cores for the half types (16 x 16 x 16 wmma tiles, float accumulators), else dot
//      products on CUDA cores, a group of lanes each (block_dots: lanes stride over P, a
//      fixed shuffle tree, deterministic), accumulated in Acc;
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
// (w, wr, hs and rs are block_product's operands: rows padded against bank conflicts,
// and for tensor cores to whole tiles with zeros);
//   hs [B, P]   T    h_{t-1} of the step's rows
//   rs [B, H]   T    r = o * tanh(c) of the step's rows (projection)
//   pre [B, G*U] A   the recurrent products (then the projection's outputs)
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

constexpr SIMT_HD int64_t kind_gates(int kind) {
  return kind == kKindLstm ? 4 : kind == kKindGru ? 3 : 1;
}

// Lanes that share one dot product of length n: a power of two in [1, 32], about n / 8
// (each lane sums at least 8 products where n allows), so short rows need few shuffles.
SIMT_HD int dot_lanes(int64_t n) {
  int lanes = 1;
  while (lanes < 32 && lanes * 16 <= n) lanes *= 2;
  return lanes;
}

// Tensor cores for the half types (simt::wmma: m16n16k16 tiles, float accumulators),
// CUDA cores (block_dots) for float and double.
template <typename T>
struct TensorCores {
  static constexpr bool value = false;
};
#if SIMT_HAS_HALF
template <>
struct TensorCores<__half> {
  static constexpr bool value = true;
};
template <>
struct TensorCores<__nv_bfloat16> {
  static constexpr bool value = true;
};
#endif

SIMT_HD int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// The shared-memory operands of block_product: rows of len elements, stored with row stride
// operand_ld (tensor cores: len rounded up to a whole tile, zeros beyond len, plus 8
// elements of skew; CUDA cores: plus a dot's lanes, against bank conflicts), operand_rows
// rows allocated for n rows (tensor cores: whole tiles). Outputs: row stride product_ld.
SIMT_HD int64_t operand_ld(bool tc, int64_t len) {
  return tc ? round16(len) + 8 : len + dot_lanes(len);
}
SIMT_HD int64_t operand_rows(bool tc, int64_t n) { return tc ? round16(n) : n; }
SIMT_HD int64_t product_ld(bool tc, int64_t n) { return tc ? round16(n) : n; }

// Byte offsets of the shared-memory arrays above; each starts on a 32-byte boundary (what
// the tensor cores' tile loads need). tc: the half types' tensor-core operand layout.
struct PersistentLayout {
  int64_t w = 0, wr = 0, hs = 0, rs = 0, pre = 0, cs = 0, hl = 0, bh = 0, ctl = 0, bytes = 0;
  PersistentLayout() = default;
  SIMT_HD PersistentLayout(int kind, bool proj, int64_t B, int64_t H, int64_t P, int64_t U,
                           int64_t V, int64_t t_size, int64_t a_size, bool tc) {
    const int64_t G = kind_gates(kind);
    int64_t at = 0;
    auto take = [&at](int64_t bytes) {
      const int64_t start = at;
      at += (bytes + 31) / 32 * 32;
      return start;
    };
    const int64_t rows = operand_rows(tc, B);
    w = take(operand_rows(tc, G * U) * operand_ld(tc, P) * t_size);
    wr = take(proj ? operand_rows(tc, V) * operand_ld(tc, H) * t_size : 0);
    hs = take(rows * operand_ld(tc, P) * t_size);
    rs = take(proj ? rows * operand_ld(tc, H) * t_size : 0);
    pre = take(rows * product_ld(tc, G * U) * a_size);  // also the projection's outputs
    cs = take(kind == kKindLstm ? B * U * a_size : 0);
    hl = take(B * (U > V ? U : V) * t_size);
    bh = take(kind == kKindGru ? G * U * a_size : 0);
    ctl = take(4 * static_cast<int64_t>(sizeof(int64_t)));
    bytes = at;
  }
};

// What both kernels know of the sequence and their plan.
struct PersistentSteps {
  int64_t steps = 0, B = 0, H = 0, P = 0;
  int64_t U = 0, V = 0;         // units and projection outputs (state columns) per block
  bool reverse = false;         // the direction (backward: the forward's)
  const int64_t* bs = nullptr;  // [T] rows per step (device memory), or null: all B
  const int64_t* off = nullptr; // [T] first row of each step, with bs
  bool grid_syncs = true;       // false only in the emulator's test of a missing grid sync
};

// The step processed step-th in this direction's forward order: its R rows from row o, and
// the n_prev of them that the step before it (in that order) also had, from its row o_prev.
// Every thread of the block calls it (packed input: thread 0 reads the batch sizes into
// ctl, between two barriers).
struct StepRows {
  int64_t R, o, n_prev, o_prev;
};
SIMT_DEVICE StepRows step_rows(const PersistentSteps& p, int64_t step, int64_t* ctl) {
  const int64_t t = p.reverse ? p.steps - 1 - step : step;
  const int64_t tp = p.reverse ? (t + 1 < p.steps ? t + 1 : -1) : t - 1;
  if (p.bs == nullptr) return {p.B, t * p.B, tp >= 0 ? p.B : 0, tp * p.B};
  __syncthreads();  // every thread has read the previous step's ctl
  if (threadIdx.x == 0) {
    ctl[0] = simt::ld(p.bs + t);
    ctl[1] = simt::ld(p.off + t);
    const int64_t bp = tp >= 0 ? simt::ld(p.bs + tp) : 0;
    ctl[2] = bp < ctl[0] ? bp : ctl[0];
    ctl[3] = tp >= 0 ? simt::ld(p.off + tp) : 0;
  }
  __syncthreads();
  return {ctl[0], ctl[1], ctl[2], ctl[3]};
}

// The block's hidden units [u0, u0 + nu) and its state columns [col0, col0 + ncols): the
// units, or with a projection its V of the P outputs (none for trailing blocks when
// blocks * V > P). nu >= 1: the grid has ceil(H / U) blocks.
struct BlockSlice {
  int64_t u0, nu, col0, ncols;
};
SIMT_DEVICE BlockSlice block_slice(const PersistentSteps& p, bool proj) {
  const int64_t j = blockIdx.x, u0 = j * p.U, nu = p.H - u0 < p.U ? p.H - u0 : p.U;
  if (!proj) return {u0, nu, u0, nu};
  const int64_t v0 = j * p.V, nv = p.P - v0 < p.V ? p.P - v0 : p.V;
  return {u0, nu, v0, nv > 0 ? nv : 0};
}

template <typename T>
struct PersistentForward : PersistentSteps {
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

// out[i * ldo + j] = sum over k < len of a[i][k] * bt[j][k], for i < m and j < n, in Acc<T>:
// a and bt are shared-memory operands (rows of len, stride operand_ld) and out is in shared
// memory too. Tensor cores: 16 x 16 tiles of out, a warp each, over whole tiles of k (the
// zero padding of both operands adds nothing); out is written in whole tiles, so it needs
// round16(m) rows and a and bt round16(m) and round16(n) rows (rows beyond m and n may hold
// anything: they only reach outputs beyond them). Every thread of the block calls it.
template <typename T>
SIMT_DEVICE void block_product(int64_t m, int64_t n, int64_t len, const T* a, const T* bt,
                               Acc<T>* out, int64_t ldo) {
  const bool tc = TensorCores<T>::value;
  const int64_t ld = operand_ld(tc, len);
  if constexpr (TensorCores<T>::value) {
    namespace wmma = simt::wmma;
    const int warp = static_cast<int>(threadIdx.x) / 32, nwarps = static_cast<int>(blockDim.x) / 32;
    const int64_t tiles_n = (n + 15) / 16, tiles = (m + 15) / 16 * tiles_n, klen = round16(len);
    for (int64_t t = warp; t < tiles; t += nwarps) {
      const int64_t i0 = t / tiles_n * 16, j0 = t % tiles_n * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int64_t k0 = 0; k0 < klen; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, a + i0 * ld + k0, static_cast<unsigned>(ld));
        wmma::load_matrix_sync(fb, bt + j0 * ld + k0, static_cast<unsigned>(ld));
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(out + i0 * ldo + j0, acc, static_cast<unsigned>(ldo),
                              wmma::mem_row_major);
    }
  } else {
    block_dots<Acc<T>, T>(
        m * n, len, dot_lanes(len),
        [&](int64_t item, const T*& ra, const T*& rb) {
          ra = a + (item / n) * ld;
          rb = bt + (item % n) * ld;
        },
        [&](int64_t item, Acc<T> sum) { out[(item / n) * ldo + item % n] = sum; });
  }
}

// Zeros columns [len, ld) of rows [0, rows) of a shared-memory operand (tensor cores: the
// padding of k, which the products read). Every thread of the block calls it.
template <typename T>
SIMT_DEVICE void zero_padding(T* x, int64_t rows, int64_t len) {
  if constexpr (TensorCores<T>::value) {
    const int64_t ld = operand_ld(true, len), pad = ld - len;
    for (int64_t e = threadIdx.x; e < rows * pad; e += blockDim.x) {
      x[(e / pad) * ld + len + e % pad] = to<T>(0.0f);
    }
  }
}

template <typename T, int Kind>
__global__ void persistent_forward(PersistentForward<T> p) {
  using A = Acc<T>;
  constexpr int64_t G = kind_gates(Kind);
  const bool proj = p.w_hr != nullptr;
  const int64_t B = p.B, H = p.H, P = p.P, U = p.U, V = p.V, GH = G * H;
  constexpr bool tc = TensorCores<T>::value;
  const PersistentLayout lay(Kind, proj, B, H, P, U, V, sizeof(T), sizeof(A), tc);
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
  const int64_t ldp = operand_ld(tc, P), ldh = operand_ld(tc, H);  // operand row strides
  const int64_t ldpre = product_ld(tc, G * U);
  const auto [u0, nu, col0, ncols] = block_slice(p, proj);
  const int64_t X = U > V ? U : V;  // hl's row stride

  // The resident weights and the state of the block's units: read once.
  for (int64_t e = tid; e < G * nu * P; e += nthreads) {
    const int64_t g = e / (nu * P), rest = e - g * nu * P, u = rest / P, k = rest - u * P;
    w[(g * U + u) * ldp + k] = simt::ldg(p.w_hh + (g * H + u0 + u) * P + k);
  }
  zero_padding(w, operand_rows(tc, G * U), P);
  zero_padding(hs, operand_rows(tc, B), P);
  if (proj) {
    zero_padding(wr, operand_rows(tc, V), H);
    zero_padding(rs, operand_rows(tc, B), H);
  }
  for (int64_t e = tid; e < (proj ? ncols : 0) * H; e += nthreads) {
    const int64_t v = e / H, k = e - v * H;
    wr[v * ldh + k] = simt::ldg(p.w_hr + (col0 + v) * H + k);
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
    const auto [R, o, n_prev, o_prev] = step_rows(p, step, ctl);
    if (R == 0) continue;  // the same in every block

    // 1. h_{t-1} of the step's rows.
    for (int64_t e = tid; e < R * P; e += nthreads) {
      const int64_t b = e / P, k = e - b * P;
      hs[b * ldp + k] =
          b < n_prev ? simt::ld(p.y + (o_prev + b) * P + k) : simt::ld(p.h + b * P + k);
    }
    __syncthreads();

    // 2. The recurrent pre-activations of the block's units.
    block_product(R, G * U, P, hs, w, pre, ldpre);
    __syncthreads();

    // 3. The cell update of the block's units.
    for (int64_t e = tid; e < R * nu; e += nthreads) {
      const int64_t b = e / nu, u = e - b * nu, j = u0 + u, row = o + b;
      const T* gxr = p.gx + row * GH + j;
      const A* pr = pre + b * ldpre + u;
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
        const A hn = pr[2 * U] + bh[2 * U + u];
        const A h = cell::gru_forward_unit<A, DeviceAct>(xr, xz, xn, pr[0] + bh[u],
                                                         pr[U] + bh[U + u], hn,
                                                         to<A>(hs[b * ldp + j]));
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
      for (int64_t e = tid; e < R * H; e += nthreads) {
        const int64_t b = e / H, k = e - b * H;
        rs[b * ldh + k] = simt::ld(p.r + e);
      }
      __syncthreads();
      const int64_t ldv = product_ld(tc, V);  // pre holds the projection's outputs now
      block_product(R, V, H, rs, wr, pre, ldv);
      __syncthreads();
      for (int64_t e = tid; e < R * ncols; e += nthreads) {
        const int64_t b = e / ncols, v = e - b * ncols;
        store(p.y + (o + b) * P + col0 + v, pre[b * ldv + v]);
        hl[b * X + v] = to<T>(pre[b * ldv + v]);
      }
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
//   acc [B, max(X, U)] A  the products' outputs: dr of its units (projection), then the
//                   product part of dL/dh_{t-1} of its columns
//   dhs [B, X]  A   dL/dh of its state columns
//   dcs [B, U]  A   dL/dc of its units (LSTM)
//   ctl [4] int64
// with X = U (no projection) or V; the operands (wt, wrt, gs, ds) in block_product's
// layout (operand_ld, operand_rows).
struct PersistentBackLayout {
  int64_t wt = 0, wrt = 0, gs = 0, ds = 0, acc = 0, dhs = 0, dcs = 0, ctl = 0, bytes = 0;
  PersistentBackLayout() = default;
  SIMT_HD PersistentBackLayout(int kind, bool proj, int64_t B, int64_t H, int64_t P, int64_t U,
                               int64_t V, int64_t t_size, int64_t a_size, bool tc) {
    const int64_t GH = kind_gates(kind) * H, X = proj ? V : U;
    int64_t at = 0;
    auto take = [&at](int64_t bytes) {
      const int64_t start = at;
      at += (bytes + 31) / 32 * 32;
      return start;
    };
    const int64_t rows = operand_rows(tc, B);
    wt = take(operand_rows(tc, X) * operand_ld(tc, GH) * t_size);
    wrt = take(proj ? operand_rows(tc, U) * operand_ld(tc, P) * t_size : 0);
    gs = take(rows * operand_ld(tc, GH) * t_size);
    ds = take(proj ? rows * operand_ld(tc, P) * t_size : 0);
    acc = take(rows * product_ld(tc, X > U ? X : U) * a_size);
    dhs = take(B * X * a_size);
    dcs = take(kind == kKindLstm ? B * U * a_size : 0);
    ctl = take(4 * static_cast<int64_t>(sizeof(int64_t)));
    bytes = at;
  }
};

template <typename T>
struct PersistentBackward : PersistentSteps {
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
};

template <typename T, int Kind>
__global__ void persistent_backward(PersistentBackward<T> p) {
  using A = Acc<T>;
  constexpr int64_t G = kind_gates(Kind);
  const bool proj = p.w_hr != nullptr;
  const int64_t B = p.B, H = p.H, P = p.P, U = p.U, V = p.V, GH = G * H;
  const int64_t X = proj ? V : U;
  constexpr bool tc = TensorCores<T>::value;
  const PersistentBackLayout lay(Kind, proj, B, H, P, U, V, sizeof(T), sizeof(A), tc);
  unsigned char* smem = simt::dynamic_shared<unsigned char>();
  T* wt = reinterpret_cast<T*>(smem + lay.wt);
  T* wrt = reinterpret_cast<T*>(smem + lay.wrt);
  T* gs = reinterpret_cast<T*>(smem + lay.gs);
  T* ds = reinterpret_cast<T*>(smem + lay.ds);
  A* acc = reinterpret_cast<A*>(smem + lay.acc);
  A* dhs = reinterpret_cast<A*>(smem + lay.dhs);
  A* dcs = reinterpret_cast<A*>(smem + lay.dcs);
  int64_t* ctl = reinterpret_cast<int64_t*>(smem + lay.ctl);

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int64_t ldt = operand_ld(tc, GH), ldr = operand_ld(tc, P);  // operand row strides
  const int64_t ldu = product_ld(tc, U), ldx = product_ld(tc, X);     // acc's, for dr and dh
  const auto [u0, nu, col0, ncols] = block_slice(p, proj);

  for (int64_t e = tid; e < ncols * GH; e += nthreads) {
    const int64_t k = e / ncols, j = e - k * ncols;  // consecutive threads: consecutive columns
    wt[j * ldt + k] = simt::ldg(p.w_hh + k * P + col0 + j);
  }
  if (proj) {
    for (int64_t e = tid; e < nu * P; e += nthreads) {
      const int64_t q = e / nu, u = e - q * nu;
      wrt[u * ldr + q] = simt::ldg(p.w_hr + q * H + u0 + u);
    }
    zero_padding(wrt, operand_rows(tc, U), P);
    zero_padding(ds, operand_rows(tc, B), P);
  }
  zero_padding(wt, operand_rows(tc, X), GH);
  zero_padding(gs, operand_rows(tc, B), GH);
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
    const auto [R, o, n_prev, o_prev] = step_rows(p, step, ctl);
    if (R == 0) continue;

    if (proj) {
      // DR = dL/dh_t + dL/dy_t of the block's columns, for every block's dr.
      for (int64_t e = tid; e < R * ncols; e += nthreads) {
        const int64_t b = e / ncols, j = e - b * ncols;
        store(p.dr_rows + (o + b) * P + col0 + j, dhs[b * X + j] + dout(o + b, col0 + j));
      }
      if (p.grid_syncs) simt::grid_sync();
      for (int64_t e = tid; e < R * P; e += nthreads) {
        const int64_t b = e / P, q = e - b * P;
        ds[b * ldr + q] = simt::ld(p.dr_rows + o * P + e);
      }
      __syncthreads();
      block_product(R, U, P, ds, wrt, acc, ldu);  // dr of the block's units
      __syncthreads();
    }

    // The cell backward of the block's units.
    for (int64_t e = tid; e < R * nu; e += nthreads) {
      const int64_t b = e / nu, u = e - b * nu, j = u0 + u, row = o + b;
      if constexpr (Kind == kKindLstm) {
        const A dr = proj ? acc[b * ldu + u] : dhs[b * X + u] + dout(row, j);
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
        gs[b * ldt + k] = simt::ld(p.dgh + (o + b) * H + k - 2 * H);
      } else {
        gs[b * ldt + k] = simt::ld(p.dg + (o + b) * GH + k);
      }
    }
    __syncthreads();
    block_product(R, X, GH, gs, wt, acc, ldx);
    __syncthreads();
    for (int64_t e = tid; e < R * ncols; e += nthreads) {
      const int64_t b = e / ncols, j = e - b * ncols;
      // GRU: plus the direct part z * dL/dh_t, left there by the cell backward.
      dhs[b * X + j] = Kind == kKindGru ? dhs[b * X + j] + acc[b * ldx + j] : acc[b * ldx + j];
    }
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
