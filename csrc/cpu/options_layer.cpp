// The CPU operators of the layers with options beyond torch.nn: layer normalisation
// (LayerNorm LSTM and GRU), zoneout and recurrent (variational) dropout, forward and BPTT,
// float32 and float64. (Weight dropout needs no kernel of its own: the layer runs on
// w_hh times its mask, rnnfast/ops.py.) The formulas are rnnfast/reference.py's.
//
// Legend: T steps, B batch, N rows (sum of the batch sizes), I input, H hidden, P output
// size (proj_size or H), G gates (LSTM 4: i, f, g, o; GRU 3: r, z, n).
//
// Threads: each thread owns a fixed block of batch rows for the whole sequence. A row's
// recurrence never reads another row, so the step loop needs no barrier at all, and the
// layer normalisations (over the G*H gate pre-activations, over the H cells) are sums
// over one row, inside one thread. With fewer than 4 rows per thread the step's product is
// split by columns of W_hh instead (two barriers a step). Every value is summed in one order
// whatever the split: float32 results are bitwise independent of the thread count where the
// kernel set has rnnfast's panel and blocked GEMMs (the AVX2 and AVX-512 sets).
// Per step a thread multiplies its rows of h_{t-1} by all of W_hh (packed once per call for
// that thread), or, split by columns, all rows by its slice of W_hh. The input side is one
// product before the loop (each thread a block of W_ih's rows), the weight gradients
// whole-sequence products after the backward loop. The step loops run in layer.h's
// step_loop_region (the load monitor of the plain layers).
//
// Saved per row (the workspace, [N, ws_cols]):
//   LSTM: [0, 4H) i, f, g, o (activated); [4H, 5H) c~_t (the new cell before zoneout), or
//         with layer_norm its normalised value (c~ - mean) * rstd; with layer_norm also
//         [5H, 9H) the normalised recurrent product, [9H, 13H) the normalised input
//         product, and rstd of those three at 13H, 13H + 1, 13H + 2.
//   GRU:  [0, 3H) r, z, n; [3H, 4H) the n gate's recurrent side (after LN, with b_hn);
//         with layer_norm [4H, 7H) the normalised recurrent product, [7H, 10H) the
//         normalised input product, rstd of those two at 10H, 10H + 1.
// The LSTM also saves c_t (after zoneout) per row (`cells`, [N, H]); the output is h_t.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../core/checks.h"
#include "blas.h"
#include "layer.h"
#include "pointwise.h"

#define RNNFAST_ISA options_layer
#include "fast_math.h"

namespace rnnfast {
namespace cpu {
namespace {

using at::Tensor;

// A buffer of n values, not initialised (every element is written before it is read).
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> p;
  explicit Buffer(int64_t n) : p(n > 0 ? new T[static_cast<size_t>(n)] : nullptr) {}
  T* data() const { return p.get(); }
};

using Act = options_layer::FastAct;
constexpr double kLnEps = 1e-5;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNNFAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RNNFAST_CLONES
#endif

// ------------------------------------------------------------------ row-wise maths

// Normalises v[0, n) in place: v = (v - mean) * rstd (biased variance, eps 1e-5); returns
// rstd. Two passes (no cancellation), each a vector reduction in one fixed order.
template <typename T>
inline __attribute__((always_inline)) T normalise(T* __restrict v, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += v[k];
  const T mean = s / static_cast<T>(n);
  T q = 0;
#pragma omp simd reduction(+ : q)
  for (int64_t k = 0; k < n; ++k) q += (v[k] - mean) * (v[k] - mean);
  const T rstd = T(1) / std::sqrt(q / static_cast<T>(n) + static_cast<T>(kLnEps));
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) v[k] = (v[k] - mean) * rstd;
  return rstd;
}

// The gradient of LN's input from the gradient dy of its normalised value xh times gamma:
// dv = rstd * (g - mean(g) - xh * mean(g * xh)), g = gamma * dy. dv may be dy.
template <typename T>
inline __attribute__((always_inline)) void normalise_backward(
    const T* dy, const T* __restrict gamma, const T* __restrict xh, T rstd, int64_t n, T* dv) {
  T sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
  for (int64_t k = 0; k < n; ++k) {
    const T g = gamma[k] * dy[k];
    sg += g;
    sgx += g * xh[k];
  }
  const T mg = sg / static_cast<T>(n), mgx = sgx / static_cast<T>(n);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) dv[k] = rstd * (gamma[k] * dy[k] - mg - xh[k] * mgx);
}

// What one step's pointwise pass needs, for the rows [0, rows) of one thread.
template <typename T>
struct StepRows {
  int64_t rows, H, P;
  const T* xg;        // [rows, xg_ld] input side (LN applied, no bias), or with biases folded
  int64_t xg_ld;
  T* hg;              // [rows, G*H] the recurrent product, in: raw, out: clobbered
  const T* b_hh;      // GRU: [G*H] or nullptr, added after the recurrent LN (the LSTM's
                      //   biases are folded into xg)
  const T* ln_hh;     // [G*H] gamma of the recurrent LN, or nullptr (no LN)
  const T* ln_c;      // [H] LSTM: gamma and beta of the cell LN
  const T* ln_c_b;
  T* h;               // [rows, P] in: h_{t-1}; out: h_t (after zoneout)
  T* c;               // [rows, H] LSTM: in c_{t-1}, out c_t
  T* hnew;            // [rows, P] scratch: h~_t before zoneout (LSTM: o tanh(LN c) before
                      //   the projection, [rows, H])
  const bool* zh;     // [rows, P] zoneout masks of this step (true keeps), or nullptr
  const bool* zc;     // [rows, H]
  T zp;               // evaluation zoneout probability (used where the mask is nullptr)
  T* ws;              // [rows, ws_ld] saved rows, or nullptr
  int64_t ws_ld;
  T* cells;           // [rows, H] LSTM: c_t saved, or nullptr
  T* tmp;             // [H] scratch
};

// The hot loops, as functions with restrict parameters (inlined: GCC vectorises a loop over
// restrict parameters without alias checks, not over restrict locals).
template <typename T>
inline __attribute__((always_inline)) void lstm_gates(int64_t H, T* __restrict gi, T* __restrict gf,
                                                      T* __restrict gc, T* __restrict go,
                                                      const T* __restrict c, T* __restrict cn) {
  for (int64_t k = 0; k < H; ++k) {
    const T i = Act::sigmoid(gi[k]), f = Act::sigmoid(gf[k]);
    const T gg = Act::tanh(gc[k]), o = Act::sigmoid(go[k]);
    gi[k] = i;
    gf[k] = f;
    gc[k] = gg;
    go[k] = o;
    cn[k] = f * c[k] + i * gg;
  }
}

// v = v * gamma + beta (beta nullptr: none), then, with o, v = o * tanh(v).
template <typename T>
inline __attribute__((always_inline)) void affine(int64_t n, T* __restrict v,
                                                  const T* __restrict gamma,
                                                  const T* __restrict beta) {
  for (int64_t k = 0; k < n; ++k) v[k] = v[k] * gamma[k] + (beta != nullptr ? beta[k] : T(0));
}
template <typename T>
inline __attribute__((always_inline)) void add_to(int64_t n, T* __restrict v, const T* __restrict x) {
  for (int64_t k = 0; k < n; ++k) v[k] += x[k];
}
template <typename T>
inline __attribute__((always_inline)) void gated_tanh(int64_t n, T* __restrict v,
                                                      const T* __restrict o) {
  for (int64_t k = 0; k < n; ++k) v[k] = o[k] * Act::tanh(v[k]);
}
// prev = zoneout(prev, next): the mask m (true keeps prev), or the mix with zp.
template <typename T>
inline __attribute__((always_inline)) void zone_rows(int64_t n, T* __restrict prev,
                                                     const T* __restrict next,
                                                     const bool* __restrict m, T zp) {
  if (m != nullptr) {
    for (int64_t k = 0; k < n; ++k) prev[k] = m[k] ? prev[k] : next[k];
  } else if (zp != T(0)) {
    for (int64_t k = 0; k < n; ++k) prev[k] = zp * prev[k] + (T(1) - zp) * next[k];
  } else {
    std::memcpy(prev, next, sizeof(T) * n);
  }
}
template <typename T>
inline __attribute__((always_inline)) void gru_gates(int64_t H, const T* __restrict xr,
                                                     const T* __restrict xz, const T* __restrict xn,
                                                     T* __restrict gr, T* __restrict gz,
                                                     const T* __restrict gn, const T* __restrict h,
                                                     T* __restrict hn, T* __restrict nt) {
  for (int64_t k = 0; k < H; ++k) {
    const T r = Act::sigmoid(xr[k] + gr[k]);
    const T z = Act::sigmoid(xz[k] + gz[k]);
    const T n = Act::tanh(xn[k] + r * gn[k]);
    gr[k] = r;
    gz[k] = z;
    hn[k] = (T(1) - z) * n + z * h[k];
    nt[k] = n;
  }
}

// v = LN(v) * gamma + beta (beta nullptr: none), in place; the normalised row and its rstd go
// to xhat and *rstd where those are given (the saved row of backward).
template <typename T>
inline __attribute__((always_inline)) void layer_norm_row(T* v, int64_t n, const T* gamma,
                                                          const T* beta, T* xhat, T* rstd) {
  const T r = normalise(v, n);
  if (xhat != nullptr) {
    std::memcpy(xhat, v, sizeof(T) * n);
    *rstd = r;
  }
  affine(n, v, gamma, beta);
}

// LSTM step, part 1 (before the projection): gates, c_t, r = o * tanh(LN c~) into hnew.
template <typename T>
inline __attribute__((always_inline)) void lstm_rows_impl(const StepRows<T>& a) {
  const int64_t H = a.H, GH = 4 * H;
  const bool ln = a.ln_hh != nullptr;
  for (int64_t j = 0; j < a.rows; ++j) {
    T* g = a.hg + j * GH;
    const T* x = a.xg + j * a.xg_ld;
    T* ws = a.ws != nullptr ? a.ws + j * a.ws_ld : nullptr;
    if (ln)
      layer_norm_row<T>(g, GH, a.ln_hh, nullptr, ws != nullptr ? ws + 5 * H : nullptr,
                        ws != nullptr ? ws + 13 * H : nullptr);
    add_to(GH, g, x);
    T* cn = a.hnew + j * H;  // c~_t here first
    T* c = a.c + j * H;
    lstm_gates(H, g, g + H, g + 2 * H, g + 3 * H, c, cn);
    if (ws != nullptr) std::memcpy(ws, g, sizeof(T) * GH);
    // zoned-out c_t, then c~ -> LN(c~) (in cn) -> r = o * tanh(.)
    zone_rows(H, c, cn, a.zc != nullptr ? a.zc + j * H : nullptr, a.zp);
    if (a.cells != nullptr) std::memcpy(a.cells + j * H, c, sizeof(T) * H);
    if (ln) {
      layer_norm_row(cn, H, a.ln_c, a.ln_c_b, ws != nullptr ? ws + 4 * H : nullptr,
                     ws != nullptr ? ws + 13 * H + 2 : nullptr);
    } else if (ws != nullptr) {
      std::memcpy(ws + 4 * H, cn, sizeof(T) * H);
    }
    gated_tanh(H, cn, g + 3 * H);
  }
}

// GRU step: gates, h~_t into hnew (before zoneout).
template <typename T>
inline __attribute__((always_inline)) void gru_rows_impl(const StepRows<T>& a) {
  const int64_t H = a.H, GH = 3 * H;
  const bool ln = a.ln_hh != nullptr;
  for (int64_t j = 0; j < a.rows; ++j) {
    T* g = a.hg + j * GH;
    const T* x = a.xg + j * a.xg_ld;
    T* ws = a.ws != nullptr ? a.ws + j * a.ws_ld : nullptr;
    if (ln)
      layer_norm_row<T>(g, GH, a.ln_hh, nullptr, ws != nullptr ? ws + 4 * H : nullptr,
                        ws != nullptr ? ws + 10 * H : nullptr);
    if (a.b_hh != nullptr) add_to(GH, g, a.b_hh);
    gru_gates(H, x, x + H, x + 2 * H, g, g + H, g + 2 * H, a.h + j * a.P, a.hnew + j * H, a.tmp);
    if (ws != nullptr) {
      std::memcpy(ws, g, sizeof(T) * 2 * H);
      std::memcpy(ws + 2 * H, a.tmp, sizeof(T) * H);
      std::memcpy(ws + 3 * H, g + 2 * H, sizeof(T) * H);
    }
  }
}

// h_t = zoneout(h_{t-1}, h~_t) for rows [0, rows), written to h and the output rows y.
template <typename T>
inline __attribute__((always_inline)) void zone_h_impl(const StepRows<T>& a, const T* hnew,
                                                       T* y) {
  for (int64_t j = 0; j < a.rows; ++j) {
    T* h = a.h + j * a.P;
    zone_rows(a.P, h, hnew + j * a.P, a.zh != nullptr ? a.zh + j * a.P : nullptr, a.zp);
    std::memcpy(y + j * a.P, h, sizeof(T) * a.P);
  }
}

RNNFAST_CLONES void lstm_rows_f32(const StepRows<float>& a) { lstm_rows_impl(a); }
void lstm_rows(const StepRows<float>& a) { lstm_rows_f32(a); }
void lstm_rows(const StepRows<double>& a) { lstm_rows_impl(a); }
RNNFAST_CLONES void gru_rows_f32(const StepRows<float>& a) { gru_rows_impl(a); }
void gru_rows(const StepRows<float>& a) { gru_rows_f32(a); }
void gru_rows(const StepRows<double>& a) { gru_rows_impl(a); }
RNNFAST_CLONES void zone_h_f32(const StepRows<float>& a, const float* hn, float* y) { zone_h_impl(a, hn, y); }
void zone_h(const StepRows<float>& a, const float* hn, float* y) { zone_h_f32(a, hn, y); }
void zone_h(const StepRows<double>& a, const double* hn, double* y) { zone_h_impl(a, hn, y); }

// ------------------------------------------------------------------ backward rows


template <typename T>
struct BackRows {
  int64_t rows, H, P;
  const T* ws;        // [rows, ws_ld] saved rows of this step
  int64_t ws_ld;
  const T* ln_hh;     // LN gammas, or nullptr (no LN)
  const T* ln_c;      // LSTM: the cell LN's gamma and beta
  const T* ln_c_b;
  const T* prev;      // [rows, H] LSTM c_{t-1}; [rows, P] GRU h_{t-1}
  T* dh;              // [rows, P] in: dL/dh_t (after zoneout); out: the part of dL/dh_{t-1}
                      //   that does not go through W_hh (zoneout's, and the GRU's z path)
  T* dh_tilde;        // [rows, P] out: dL/dh~_t, h~_t the new h before zoneout
  const T* dr;        // [rows, H] LSTM: dL/d(o tanh LN c~) (dh_tilde without projection)
  T* dc;              // [rows, H] LSTM: in dL/dc_t (after zoneout), out dL/dc_{t-1}
  const bool* zh;     // [rows, P] zoneout masks of this step, or nullptr (then zp)
  const bool* zc;     // [rows, H]
  T zp;
  T* dgx;             // [rows, G*H] out: dL/d(input side after LN) (= the bias gradient rows)
  T* dgh;             // [rows, G*H] GRU out: dL/d(recurrent side after LN) (LSTM: dgx)
  T* dhg;             // [rows, G*H] out: dL/d(raw recurrent product): the LN backward of dgh,
                      //   or dgh itself (the same buffer) without LN
  T* dchat;           // [rows, H] LSTM with LN: out dL/d(LN(c~) output)
  T* r;               // [rows, H] LSTM with projection: out o tanh(LN c~) (for dW_hr)
  T* tmp;             // [3H] scratch
};

// dh~ = (1 - keep) dh; dh keeps keep * dh (zoneout's path to the previous state).
template <typename T>
inline __attribute__((always_inline)) void unzone(int64_t n, T* __restrict dh, T* __restrict dt,
                                                  const bool* __restrict m, T zp) {
  if (m != nullptr) {
    for (int64_t k = 0; k < n; ++k) {
      dt[k] = m[k] ? T(0) : dh[k];
      dh[k] = m[k] ? dh[k] : T(0);
    }
  } else {
    for (int64_t k = 0; k < n; ++k) {
      dt[k] = (T(1) - zp) * dh[k];
      dh[k] = zp * dh[k];
    }
  }
}

template <typename T>
inline __attribute__((always_inline)) void unzone_h_impl(const BackRows<T>& a) {
  for (int64_t j = 0; j < a.rows; ++j)
    unzone(a.P, a.dh + j * a.P, a.dh_tilde + j * a.P, a.zh != nullptr ? a.zh + j * a.P : nullptr,
           a.zp);
}

// LSTM backward through h = o tanh(chat), chat = LN(c~) (or c~): dL/do_pre, dL/dchat, r.
template <typename T>
inline __attribute__((always_inline)) void lstm_back_out(
    int64_t H, const T* __restrict ao, const T* __restrict cn, const T* __restrict gamma,
    const T* __restrict beta, const T* __restrict dr, T* __restrict r, T* __restrict dout,
    T* __restrict dch) {
  for (int64_t k = 0; k < H; ++k) {
    const T o = ao[k];
    const T chat = gamma != nullptr ? cn[k] * gamma[k] + beta[k] : cn[k];
    const T th = Act::tanh(chat);
    r[k] = o * th;
    dout[k] = dr[k] * th * o * (T(1) - o);
    dch[k] = dr[k] * o * (T(1) - th * th);
  }
}

// LSTM backward through c~ = f c_{t-1} + i g and c_t = zoneout(c_{t-1}, c~).
template <typename T>
inline __attribute__((always_inline)) void lstm_back_cell(
    int64_t H, const T* __restrict ai, const T* __restrict af, const T* __restrict ag,
    const T* __restrict cp, const T* __restrict dct, const bool* __restrict m, T zp,
    T* __restrict dc, T* __restrict di, T* __restrict df, T* __restrict dgg) {
  for (int64_t k = 0; k < H; ++k) {
    const T keep = m != nullptr ? (m[k] ? T(1) : T(0)) : zp;
    const T i = ai[k], f = af[k], g = ag[k];
    const T dcn = (T(1) - keep) * dc[k] + dct[k];  // dL/dc~_t
    dc[k] = keep * dc[k] + dcn * f;                // dL/dc_{t-1}
    di[k] = dcn * g * i * (T(1) - i);
    df[k] = dcn * cp[k] * f * (T(1) - f);
    dgg[k] = dcn * i * (T(1) - g * g);
  }
}

template <typename T>
inline __attribute__((always_inline)) void lstm_back_impl(const BackRows<T>& a) {
  const int64_t H = a.H, GH = 4 * H;
  const bool ln = a.ln_hh != nullptr;
  for (int64_t j = 0; j < a.rows; ++j) {
    const T* ws = a.ws + j * a.ws_ld;
    T* dg = a.dgx + j * GH;
    T* dch = ln ? a.dchat + j * H : a.tmp;  // dL/d(LN(c~) output), or dL/dc~ from h
    T* dct = a.tmp + H;                     // dL/dc~ from h
    lstm_back_out(H, ws + 3 * H, ws + 4 * H, ln ? a.ln_c : nullptr, a.ln_c_b, a.dr + j * H,
                  a.r != nullptr ? a.r + j * H : a.tmp + 2 * H, dg + 3 * H, dch);
    if (ln) {
      normalise_backward(dch, a.ln_c, ws + 4 * H, ws[13 * H + 2], H, dct);
    } else {
      std::memcpy(dct, dch, sizeof(T) * H);
    }
    lstm_back_cell(H, ws, ws + H, ws + 2 * H, a.prev + j * H, dct,
                   a.zc != nullptr ? a.zc + j * H : nullptr, a.zp, a.dc + j * H, dg, dg + H,
                   dg + 2 * H);
    if (ln) normalise_backward(dg, a.ln_hh, ws + 5 * H, ws[13 * H], GH, a.dhg + j * GH);
  }
}

template <typename T>
inline __attribute__((always_inline)) void gru_back_gates(
    int64_t H, const T* __restrict ar, const T* __restrict az, const T* __restrict an,
    const T* __restrict ahn, const T* __restrict hp, const T* __restrict dt, T* __restrict dh,
    T* __restrict dxr, T* __restrict dxz, T* __restrict dxn, T* __restrict dhr,
    T* __restrict dhz, T* __restrict dhn) {
  for (int64_t k = 0; k < H; ++k) {
    const T r = ar[k], z = az[k], n = an[k];
    const T dn = dt[k] * (T(1) - z) * (T(1) - n * n);
    const T dz = dt[k] * (hp[k] - n) * z * (T(1) - z);
    const T dr = dn * ahn[k] * r * (T(1) - r);
    dh[k] += dt[k] * z;
    dxr[k] = dr;
    dxz[k] = dz;
    dxn[k] = dn;
    dhr[k] = dr;
    dhz[k] = dz;
    dhn[k] = dn * r;
  }
}

template <typename T>
inline __attribute__((always_inline)) void gru_back_impl(const BackRows<T>& a) {
  const int64_t H = a.H, GH = 3 * H;
  const bool ln = a.ln_hh != nullptr;
  for (int64_t j = 0; j < a.rows; ++j) {
    const T* ws = a.ws + j * a.ws_ld;
    T* dx = a.dgx + j * GH;
    T* dg = a.dgh + j * GH;
    gru_back_gates(H, ws, ws + H, ws + 2 * H, ws + 3 * H, a.prev + j * H, a.dh_tilde + j * H,
                   a.dh + j * H, dx, dx + H, dx + 2 * H, dg, dg + H, dg + 2 * H);
    if (ln) normalise_backward(dg, a.ln_hh, ws + 4 * H, ws[10 * H], GH, a.dhg + j * GH);
  }
}

RNNFAST_CLONES void unzone_h_f32(const BackRows<float>& a) { unzone_h_impl(a); }
void unzone_h(const BackRows<float>& a) { unzone_h_f32(a); }
void unzone_h(const BackRows<double>& a) { unzone_h_impl(a); }
RNNFAST_CLONES void lstm_back_f32(const BackRows<float>& a) { lstm_back_impl(a); }
void lstm_back(const BackRows<float>& a) { lstm_back_f32(a); }
void lstm_back(const BackRows<double>& a) { lstm_back_impl(a); }
RNNFAST_CLONES void gru_back_f32(const BackRows<float>& a) { gru_back_impl(a); }
void gru_back(const BackRows<float>& a) { gru_back_f32(a); }
void gru_back(const BackRows<double>& a) { gru_back_impl(a); }

// out[k] = sum over rows i of A[i, k] (* Bm[i, k] if Bm), rows in order, in double, column
// blocks on torch's threads: the same bits whatever the thread count.
template <typename T>
void column_sums(T* out, const T* A, int64_t lda, const T* Bm, int64_t ldb, int64_t rows,
                 int64_t cols) {
  constexpr int64_t kBlock = 64;
  at::parallel_for(0, (cols + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    double acc[kBlock];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t k0 = blk * kBlock, n = std::min(cols, k0 + kBlock) - k0;
      std::fill(acc, acc + n, 0.0);
      for (int64_t i = 0; i < rows; ++i) {
        const T* __restrict a = A + i * lda + k0;
        if (Bm != nullptr) {
          const T* __restrict b = Bm + i * ldb + k0;
          for (int64_t k = 0; k < n; ++k) acc[k] += static_cast<double>(a[k]) * b[k];
        } else {
          for (int64_t k = 0; k < n; ++k) acc[k] += a[k];
        }
      }
      for (int64_t k = 0; k < n; ++k) out[k0 + k] = static_cast<T>(acc[k]);
    }
  });
}

// C = op(A) B for the whole-sequence products (as sequence_gemm, beta 0). float32 where the
// kernel set has a blocked GEMM takes it at every size: its result does not depend on the
// thread count (sequence_gemm hands small products, and on Intel CPUs with MKL large ones too,
// to the BLAS, whose sums may). Otherwise sequence_gemm.
template <typename T>
void whole_gemm(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                const T* B, int64_t ldb, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_kernels().blocked_gemm_f32 != nullptr) {
      blocked_sequence_gemm(trans_a, M, N, K, A, lda, B, ldb, false, C, ldc);
      return;
    }
  }
  sequence_gemm<T>(trans_a, M, N, K, A, lda, B, ldb, T(0), C, ldc);
}

// ------------------------------------------------------------------ the executor

template <typename T>
struct Layer {
  bool lstm;
  const Sequence* s;
  bool reverse;
  int64_t I, H, P;
  const T* x;                 // [N, I]
  const T* w_ih;              // [G*H, I]
  const T* w_hh;              // [G*H, P]
  const T* b_ih;              // [G*H] or nullptr
  const T* b_hh;              // [G*H] or nullptr
  const T* w_hr;              // [P, H] LSTM with projection, or nullptr
  const T* ln_ih;             // [G*H] gammas, or nullptr (no LN); LSTM also ln_c, ln_c_b [H]
  const T* ln_hh;
  const T* ln_c;
  const T* ln_c_b;
  const T* rec_mask;          // [B, P] or nullptr
  const bool* zh;             // [T, B, P] or nullptr
  const bool* zc;             // [T, B, H] LSTM, or nullptr
  T zp;                       // evaluation zoneout probability
  int64_t ws_ld;

  int64_t G() const { return lstm ? 4 : 3; }
  bool ln() const { return ln_hh != nullptr; }
  // Column of the saved normalised input product and of its rstd.
  int64_t xhat_ih_col() const { return lstm ? 9 * H : 7 * H; }
  int64_t rstd_ih_col() const { return lstm ? 13 * H + 1 : 10 * H + 1; }
  int64_t xhat_hh_col() const { return lstm ? 5 * H : 4 * H; }
};

int64_t workspace_cols(bool lstm, bool ln, int64_t H) {
  if (lstm) return ln ? 13 * H + 3 : 5 * H;
  return ln ? 10 * H + 2 : 4 * H;
}

// [begin, end) of thread tid's share of n (in blocks of `align`).
std::pair<int64_t, int64_t> share(int64_t n, int tid, int nt, int64_t align = 1) {
  const int64_t blocks = (n + align - 1) / align, per = blocks / nt, rem = blocks % nt;
  const int64_t b0 = tid * per + std::min<int64_t>(tid, rem);
  const int64_t b1 = b0 + per + (tid < rem ? 1 : 0);
  return {std::min(n, b0 * align), std::min(n, b1 * align)};
}

// How the threads share a step. By rows (a block of batch rows each, all of W_hh, no barrier)
// while each has kMinRowsPerThread rows or more; below that, a thread streaming all of W_hh
// for a row or two is bounded by reading it, so the product is split by columns instead (a
// slice of W_hh each, for all rows), with a barrier after it and one after the rows' pointwise
// work (each row's layer normalisation still inside one thread).
// The step loops run in layer.h's step_loop_region, under its load monitor: a split loop whose
// threads wait for each other too long runs on one thread for a while (a row-split loop has
// no barrier and never waits; a column-split one has two barriers a step).
constexpr int64_t kMinRowsPerThread = 4;

// Whether a loop's float32 result is the same bits on any split (rnnfast's panel GEMM), so
// the load monitor may put it on one thread.
template <typename T>
bool float_split_invariant() {
  return std::is_same_v<T, float> && step_gemm_split_invariant_f32();
}
bool split_by_columns(int64_t B, int nt) { return nt > 1 && B < kMinRowsPerThread * nt; }


// h, c: [B, P] and [B, H], in the initial states, out the final ones. ws, cells or nullptr.
template <typename T>
void options_forward(const Layer<T>& L, T* y, T* h, T* c, T* ws, T* cells) {
  const Sequence& s = *L.s;
  const int64_t H = L.H, P = L.P, B = s.B, N = s.N, G = L.G(), GH = G * H;
  // The input side of every row: X W_ih^T, normalised (LN), plus the biases that are added
  // after it (LSTM: b_ih + b_hh; GRU: b_ih).
  Buffer<T> xg(N * GH);
  // X W_ih^T by the step loops' product code, each thread a block of W_ih's rows (packed
  // once, as PackedWeight does for the step products): no transposed copy of W_ih, and the
  // same bits whatever the split.
  at::parallel_for(0, GH, 64, [&](int64_t c0, int64_t c1) {
    const SequentialBlasScope sequential_blas;
    const PackedWeight<T> packed(true, c1 - c0, L.I, N, L.w_ih + c0 * L.I, L.I);
    packed.gemm(N, L.x, L.I, T(0), xg.data() + c0, GH);
  });
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* __restrict v = xg.data() + r * GH;
      if (L.ln()) {
        T* const saved = ws != nullptr ? ws + r * L.ws_ld : nullptr;
        layer_norm_row<T>(v, GH, L.ln_ih, nullptr, saved != nullptr ? saved + L.xhat_ih_col() : nullptr,
                          saved != nullptr ? saved + L.rstd_ih_col() : nullptr);
      }
      if (L.b_ih != nullptr)
        for (int64_t k = 0; k < GH; ++k) v[k] += L.b_ih[k];
      if (L.lstm && L.b_hh != nullptr)
        for (int64_t k = 0; k < GH; ++k) v[k] += L.b_hh[k];
    }
  });
  const int64_t step_flops = 2 * B * GH * P + (L.w_hr != nullptr ? 2 * B * H * P : 0);
  Buffer<T> hg(B * GH);  // the recurrent product of a step, row j at hg + j * GH
  Buffer<T> hm(L.rec_mask != nullptr ? B * P : 0);  // h_{t-1} times the recurrent mask
  if (L.rec_mask != nullptr)
    for (int64_t i = 0; i < B * P; ++i) hm.data()[i] = h[i] * L.rec_mask[i];
  const T* const hin = L.rec_mask != nullptr ? hm.data() : h;
  step_loop_region(step_flops, float_split_invariant<T>(), [&](int tid, int nt, StepSync& sync) {
    const bool by_cols = split_by_columns(B, nt);
    const auto [j0, j1] = share(B, tid, nt);
    const auto [c0, c1] = by_cols ? share(GH, tid, nt, 16) : std::pair<int64_t, int64_t>{0, GH};
    const int64_t nb = j1 - j0;
    // This thread's W_hh (all of it, or its slice of rows), packed once.
    const PackedWeight<T> packed(true, c1 - c0, P, by_cols ? B : std::max<int64_t>(nb, 1),
                                 L.w_hh + c0 * P, P);
    std::vector<T> hnew(static_cast<size_t>(std::max<int64_t>(nb, 1) * std::max(H, P)));
    std::vector<T> pout(L.w_hr != nullptr ? static_cast<size_t>(nb * P) : 0);
    std::vector<T> tmp(static_cast<size_t>(H));
    for (int64_t step = 0; step < s.T; ++step) {
      const int64_t t = s.time_at(step, L.reverse);
      const int64_t b = s.bs[t], rows = std::min(j1, b) - j0;
      if (by_cols) {
        if (c1 > c0) packed.gemm(b, hin, P, T(0), hg.data() + c0, GH);
        sync.barrier();  // every column of the product is in place
      } else if (rows > 0) {
        packed.gemm(rows, hin + j0 * P, P, T(0), hg.data() + j0 * GH, GH);
      }
      if (rows > 0) {
        const int64_t row = s.off[t] + j0;
        T* const hs = h + j0 * P;
        StepRows<T> st{rows,
                       H,
                       P,
                       xg.data() + row * GH,
                       GH,
                       hg.data() + j0 * GH,
                       L.lstm ? nullptr : L.b_hh,
                       L.ln_hh,
                       L.ln_c,
                       L.ln_c_b,
                       hs,
                       L.lstm ? c + j0 * H : nullptr,
                       hnew.data(),
                       L.zh != nullptr ? L.zh + (t * B + j0) * P : nullptr,
                       L.zc != nullptr ? L.zc + (t * B + j0) * H : nullptr,
                       L.zp,
                       ws != nullptr ? ws + row * L.ws_ld : nullptr,
                       L.ws_ld,
                       cells != nullptr ? cells + row * H : nullptr,
                       tmp.data()};
        if (L.lstm) {
          lstm_rows(st);
          if (L.w_hr != nullptr) {
            gemm<T>(false, true, rows, P, H, T(1), hnew.data(), H, L.w_hr, H, T(0), pout.data(), P);
            zone_h(st, pout.data(), y + row * P);
          } else {
            zone_h(st, hnew.data(), y + row * P);
          }
        } else {
          gru_rows(st);
          zone_h(st, hnew.data(), y + row * P);
        }
        if (L.rec_mask != nullptr)
          for (int64_t i = 0; i < rows * P; ++i) hm.data()[j0 * P + i] = hs[i] * L.rec_mask[j0 * P + i];
      }
      if (by_cols) sync.barrier();  // h_t complete before the next product reads it
    }
  });
}

// dh, dc: [B, P], [B, H], in dL/dh_n and dL/dc_n, out dL/dh_0, dL/dc_0. dy [N, P] or
// nullptr. Outputs: dx [N, I] or nullptr; dw_ih, dw_hh; db_ih (LSTM: the one bias
// gradient), db_hh (GRU) or nullptr without bias; dw_hr; the LN gradients.
template <typename T>
void options_backward(const Layer<T>& L, const T* y, const T* ws, const T* cells, const T* hx,
                      const T* cx, const T* dy, T* dh, T* dc, T* dx, T* dw_ih, T* dw_hh,
                      T* db_ih, T* db_hh, T* dw_hr, T* dln_ih, T* dln_hh, T* dln_c,
                      T* dln_c_b) {
  const Sequence& s = *L.s;
  const int64_t H = L.H, P = L.P, B = s.B, N = s.N, G = L.G(), GH = G * H;
  const bool ln = L.ln(), proj = L.w_hr != nullptr;
  Buffer<T> dgx(N * GH);
  Buffer<T> dgh_buf(!L.lstm ? N * GH : 0);
  Buffer<T> dhg_buf(ln ? N * GH : 0);
  Buffer<T> dchat(L.lstm && ln ? N * H : 0);
  Buffer<T> DH(proj ? N * P : 0), R(proj ? N * H : 0);
  T* const dgh = L.lstm ? dgx.data() : dgh_buf.data();
  T* const dhg = ln ? dhg_buf.data() : dgh;
  const int64_t step_flops = 2 * B * GH * P + (proj ? 2 * B * H * P : 0);
  Buffer<T> dhr(B * P);  // a step's dG W_hh (times the recurrent mask: added by the rows' owner)
  step_loop_region(step_flops, float_split_invariant<T>(), [&](int tid, int nt, StepSync& sync) {
    const bool by_cols = split_by_columns(B, nt);
    const auto [j0, j1] = share(B, tid, nt);
    const auto [p0, p1] = by_cols ? share(P, tid, nt, 16) : std::pair<int64_t, int64_t>{0, P};
    const int64_t nb = std::max<int64_t>(j1 - j0, 1);
    // dL/dh_{t-1} = dG W_hh: this thread's columns of W_hh (all, or its slice), packed once.
    const PackedWeight<T> packed(false, p1 - p0, GH, by_cols ? B : nb, L.w_hh + p0, P);
    std::vector<T> dht(static_cast<size_t>(nb * P));
    std::vector<T> dr(proj ? static_cast<size_t>(nb * H) : 0);
    const int64_t W = L.lstm ? H : P;  // width of the previous state the cell reads
    std::vector<T> prev(static_cast<size_t>(nb * W));
    std::vector<T> tmp(static_cast<size_t>(3 * H));
    // dh += (mask *) dhr for this thread's first `rows` rows.
    const auto add_product = [&](int64_t rows) {
      T* __restrict d = dh + j0 * P;
      const T* __restrict v = dhr.data() + j0 * P;
      if (L.rec_mask != nullptr) {
        const T* __restrict m = L.rec_mask + j0 * P;
        for (int64_t i = 0; i < rows * P; ++i) d[i] += m[i] * v[i];
      } else {
        for (int64_t i = 0; i < rows * P; ++i) d[i] += v[i];
      }
    };
    for (int64_t step = s.T - 1; step >= 0; --step) {
      const int64_t t = s.time_at(step, L.reverse);
      const int64_t b = s.bs[t], rows = std::min(j1, b) - j0;
      if (rows > 0) {
        const int64_t row = s.off[t] + j0;
        T* const dhs = dh + j0 * P;
        if (dy != nullptr)
          for (int64_t i = 0; i < rows * P; ++i) dhs[i] += dy[row * P + i];
        // The previous state of these rows: the previous step's (c_{t-1} saved, h_{t-1} the
        // output) or the initial one.
        const int64_t tp = s.prev_of(t, L.reverse), n_prev = s.rows_with_prev(t, L.reverse);
        const T* src_prev = L.lstm ? cells : y;
        const T* init = L.lstm ? cx : hx;
        for (int64_t j = 0; j < rows; ++j) {
          const int64_t jj = j0 + j;
          const T* p = jj < n_prev ? src_prev + (s.off[tp] + jj) * W : init + jj * W;
          std::memcpy(prev.data() + j * W, p, sizeof(T) * W);
        }
        BackRows<T> br{rows,
                       H,
                       P,
                       ws + row * L.ws_ld,
                       L.ws_ld,
                       L.ln_hh,
                       L.ln_c,
                       L.ln_c_b,
                       prev.data(),
                       dhs,
                       dht.data(),
                       nullptr,
                       L.lstm ? dc + j0 * H : nullptr,
                       L.zh != nullptr ? L.zh + (t * B + j0) * P : nullptr,
                       L.zc != nullptr ? L.zc + (t * B + j0) * H : nullptr,
                       L.zp,
                       dgx.data() + row * GH,
                       dgh + row * GH,
                       dhg + row * GH,
                       L.lstm && ln ? dchat.data() + row * H : nullptr,
                       proj ? R.data() + row * H : nullptr,
                       tmp.data()};
        unzone_h(br);
        if (L.lstm) {
          if (proj) {
            std::memcpy(DH.data() + row * P, dht.data(), sizeof(T) * rows * P);
            gemm<T>(false, false, rows, H, P, T(1), dht.data(), P, L.w_hr, H, T(0), dr.data(), H);
            br.dr = dr.data();
          } else {
            br.dr = dht.data();
          }
          lstm_back(br);
        } else {
          gru_back(br);
        }
        if (!by_cols) {
          packed.gemm(rows, dhg + row * GH, GH, T(0), dhr.data() + j0 * P, P);
          add_product(rows);
        }
      }
      if (by_cols) {
        sync.barrier();  // every row of dG_t is in place
        if (p1 > p0) packed.gemm(b, dhg + s.off[t] * GH, GH, T(0), dhr.data() + p0, P);
        sync.barrier();  // every column of dG_t W_hh is in place
        if (rows > 0) add_product(rows);
      }
    }
  });
  // h_{t-1} of every row as the recurrent product saw it (times the recurrent mask).
  Buffer<T> hprev(N * P);
  for (int64_t t = 0; t < s.T; ++t) {
    const int64_t tp = s.prev_of(t, L.reverse), n_prev = s.rows_with_prev(t, L.reverse);
    for (int64_t j = 0; j < s.bs[t]; ++j) {
      const T* p = j < n_prev ? y + (s.off[tp] + j) * P : hx + j * P;
      T* __restrict q = hprev.data() + (s.off[t] + j) * P;
      if (L.rec_mask != nullptr) {
        for (int64_t k = 0; k < P; ++k) q[k] = p[k] * L.rec_mask[j * P + k];
      } else {
        std::memcpy(q, p, sizeof(T) * P);
      }
    }
  }
  whole_gemm<T>(true, GH, P, N, dhg, GH, hprev.data(), P, dw_hh, P);
  hprev.p.reset();
  if (db_ih != nullptr) column_sums<T>(db_ih, dgx.data(), GH, nullptr, 0, N, GH);
  if (db_hh != nullptr) column_sums<T>(db_hh, dgh, GH, nullptr, 0, N, GH);
  if (ln) {
    column_sums<T>(dln_ih, dgx.data(), GH, ws + L.xhat_ih_col(), L.ws_ld, N, GH);
    column_sums<T>(dln_hh, dgh, GH, ws + L.xhat_hh_col(), L.ws_ld, N, GH);
    if (L.lstm) {
      column_sums<T>(dln_c, dchat.data(), H, ws + 4 * H, L.ws_ld, N, H);
      column_sums<T>(dln_c_b, dchat.data(), H, nullptr, 0, N, H);
    }
    // The input side's LN backward, in place: dgx becomes dL/d(X W_ih^T).
    at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        normalise_backward(dgx.data() + r * GH, L.ln_ih, ws + r * L.ws_ld + L.xhat_ih_col(),
                           ws[r * L.ws_ld + L.rstd_ih_col()], GH, dgx.data() + r * GH);
    });
  }
  whole_gemm<T>(true, GH, L.I, N, dgx.data(), GH, L.x, L.I, dw_ih, L.I);
  if (dx != nullptr) whole_gemm<T>(false, N, L.I, GH, dgx.data(), GH, L.w_ih, L.I, dx, L.I);
  if (proj) whole_gemm<T>(true, P, H, N, DH.data(), P, R.data(), H, dw_hr, H);
}

// ------------------------------------------------------------------ operators

using OptT = std::optional<Tensor>;

template <typename T>
const T* ptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}
template <typename T>
T* out_ptr(Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

Tensor contig(const OptT& t, const at::TensorOptions& opts) {
  if (!present(t)) return Tensor();
  return t->to(opts).contiguous();
}

Tensor mask_of(const char* op, const char* name, const OptT& t, at::IntArrayRef shape) {
  if (!present(t)) return Tensor();
  TORCH_CHECK(t->sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
              t->sizes());
  return t->to(at::kBool).contiguous();
}

struct Parsed {
  Dims d;
  Tensor x, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c, ln_c_b, rec, zh, zc;
};

Parsed parse(const char* op, bool lstm, const Tensor& input, const Tensor& hx, const Tensor* cx,
             const Tensor& w_ih, const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh,
             const OptT& w_hr, const OptT& ln_ih, const OptT& ln_hh, const OptT& ln_c,
             const OptT& ln_c_b, const OptT& rec, const OptT& zh, const OptT& zc,
             const OptT& batch_sizes) {
  Parsed p;
  const int64_t G = lstm ? 4 : 3;
  p.d = check_layer(op, kCpuDtypes, G, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes);
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": float32 or float64 tensors expected, got ", input.scalar_type());
  const auto opts = input.options();
  const int64_t H = p.d.H, P = p.d.P, B = p.d.seq.B, T = p.d.seq.T;
  p.x = input.contiguous();
  p.w_ih = w_ih.contiguous();
  p.w_hh = w_hh.contiguous();
  p.b_ih = contig(b_ih, opts);
  p.b_hh = contig(b_hh, opts);
  p.w_hr = contig(w_hr, opts);
  const bool ln = present(ln_ih) || present(ln_hh);
  if (ln) {
    TORCH_CHECK(present(ln_ih) && present(ln_hh) && (!lstm || (present(ln_c) && present(ln_c_b))),
                op, ": layer normalisation needs all its weights (ln_ih, ln_hh",
                lstm ? ", ln_c, ln_c_bias)" : ")");
    check_shape(op, "ln_ih", *ln_ih, {G * H});
    check_shape(op, "ln_hh", *ln_hh, {G * H});
    p.ln_ih = contig(ln_ih, opts);
    p.ln_hh = contig(ln_hh, opts);
    if (lstm) {
      check_shape(op, "ln_c", *ln_c, {H});
      check_shape(op, "ln_c_bias", *ln_c_b, {H});
      p.ln_c = contig(ln_c, opts);
      p.ln_c_b = contig(ln_c_b, opts);
    }
  }
  if (present(rec)) {
    check_shape(op, "recurrent_mask", *rec, {B, P});
    p.rec = contig(rec, opts);
  }
  p.zh = mask_of(op, "zoneout_h", zh, {T, B, P});
  if (lstm) p.zc = mask_of(op, "zoneout_c", zc, {T, B, H});
  return p;
}

template <typename T>
Layer<T> layer_of(const Parsed& p, bool lstm, bool reverse, double zoneout) {
  Layer<T> L{};
  L.lstm = lstm;
  L.s = &p.d.seq;
  L.reverse = reverse;
  L.I = p.d.I;
  L.H = p.d.H;
  L.P = p.d.P;
  L.x = p.x.data_ptr<T>();
  L.w_ih = p.w_ih.data_ptr<T>();
  L.w_hh = p.w_hh.data_ptr<T>();
  L.b_ih = ptr<T>(p.b_ih);
  L.b_hh = ptr<T>(p.b_hh);
  L.w_hr = ptr<T>(p.w_hr);
  L.ln_ih = ptr<T>(p.ln_ih);
  L.ln_hh = ptr<T>(p.ln_hh);
  L.ln_c = ptr<T>(p.ln_c);
  L.ln_c_b = ptr<T>(p.ln_c_b);
  L.rec_mask = ptr<T>(p.rec);
  L.zh = p.zh.defined() && p.zh.numel() > 0 ? p.zh.data_ptr<bool>() : nullptr;
  L.zc = p.zc.defined() && p.zc.numel() > 0 ? p.zc.data_ptr<bool>() : nullptr;
  L.zp = static_cast<T>(zoneout);
  L.ws_ld = workspace_cols(lstm, L.ln_hh != nullptr, L.H);
  return L;
}

void check_zoneout(const char* op, double zoneout) {
  TORCH_CHECK(zoneout >= 0.0 && zoneout < 1.0, op,
              ": zoneout probability has to be between 0 and 1 (1 excluded), but got ", zoneout);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_options_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const OptT& w_hr, const OptT& ln_ih,
    const OptT& ln_hh, const OptT& ln_c, const OptT& ln_c_b, const OptT& rec, const OptT& zh,
    const OptT& zc, double zoneout, const OptT& batch_sizes, bool reverse, bool need_workspace) {
  const char* op = "rnnfast::lstm_options_forward";
  check_zoneout(op, zoneout);
  Parsed p = parse(op, true, input, hx, &cx, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c,
                   ln_c_b, rec, zh, zc, batch_sizes);
  const auto opts = input.options();
  const int64_t N = p.d.seq.N, H = p.d.H, P = p.d.P;
  Tensor output = at::empty(output_shape(input, P), opts);
  Tensor hy = hx.contiguous().clone(), cy = cx.contiguous().clone();
  const int64_t ws_cols = workspace_cols(true, present(ln_hh), H);
  Tensor ws = need_workspace ? at::empty({N, ws_cols}, opts) : empty0(opts);
  Tensor cells = need_workspace ? at::empty({N, H}, opts) : empty0(opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_options_forward", [&] {
    const Layer<scalar_t> L = layer_of<scalar_t>(p, true, reverse, zoneout);
    options_forward<scalar_t>(L, output.data_ptr<scalar_t>(), hy.data_ptr<scalar_t>(),
                              cy.data_ptr<scalar_t>(), need_workspace ? ws.data_ptr<scalar_t>() : nullptr,
                              need_workspace ? cells.data_ptr<scalar_t>() : nullptr);
  });
  return {output, hy, cy, ws, cells};
}

std::tuple<Tensor, Tensor, Tensor> gru_options_forward(
    const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const OptT& b_ih, const OptT& b_hh, const OptT& ln_ih, const OptT& ln_hh, const OptT& rec,
    const OptT& zh, double zoneout, const OptT& batch_sizes, bool reverse, bool need_workspace) {
  const char* op = "rnnfast::gru_options_forward";
  check_zoneout(op, zoneout);
  Parsed p = parse(op, false, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh, std::nullopt, ln_ih,
                   ln_hh, std::nullopt, std::nullopt, rec, zh, std::nullopt, batch_sizes);
  const auto opts = input.options();
  const int64_t N = p.d.seq.N, H = p.d.H;
  Tensor output = at::empty(output_shape(input, H), opts);
  Tensor hy = hx.contiguous().clone();
  Tensor ws = need_workspace ? at::empty({N, workspace_cols(false, present(ln_hh), H)}, opts)
                             : empty0(opts);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_options_forward", [&] {
    const Layer<scalar_t> L = layer_of<scalar_t>(p, false, reverse, zoneout);
    options_forward<scalar_t>(L, output.data_ptr<scalar_t>(), hy.data_ptr<scalar_t>(), nullptr,
                              need_workspace ? ws.data_ptr<scalar_t>() : nullptr, nullptr);
  });
  return {output, hy, ws};
}

Tensor rows_of(const OptT& g, int64_t N, int64_t P) {
  if (!present(g)) return Tensor();
  return g->contiguous().reshape({N, P});
}

void check_saved(const char* op, const Tensor& ws, int64_t N, int64_t cols) {
  TORCH_CHECK(ws.dim() == 2 && ws.size(0) == N && ws.size(1) == cols, op,
              ": the workspace does not match the layer (was forward run with need_workspace=True "
              "and the same options?); expected [", N, ", ", cols, "], got ", ws.sizes());
}

std::vector<Tensor> lstm_options_backward(
    const OptT& grad_output, const OptT& grad_hy, const OptT& grad_cy, const Tensor& input,
    const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const OptT& w_hr,
    const OptT& ln_ih, const OptT& ln_hh, const OptT& ln_c, const OptT& ln_c_b, const OptT& rec,
    const OptT& zh, const OptT& zc, double zoneout, const Tensor& output, const Tensor& workspace,
    const Tensor& cells, const OptT& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input) {
  const char* op = "rnnfast::lstm_options_backward";
  check_zoneout(op, zoneout);
  Parsed p = parse(op, true, input, hx, &cx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, ln_ih,
                   ln_hh, ln_c, ln_c_b, rec, zh, zc, batch_sizes);
  const auto opts = input.options();
  const int64_t N = p.d.seq.N, B = p.d.seq.B, H = p.d.H, P = p.d.P, GH = 4 * H, I = p.d.I;
  const bool ln = p.ln_hh.defined();
  check_saved(op, workspace, N, workspace_cols(true, ln, H));
  check_saved(op, cells, N, H);
  Tensor y = output.contiguous().reshape({N, P});
  Tensor dy = rows_of(grad_output, N, P);
  Tensor dh = state_grad(grad_hy, B, P, opts), dc = state_grad(grad_cy, B, H, opts);
  Tensor dx = need_grad_input ? at::empty_like(p.x) : empty0(opts);
  Tensor dw_ih = at::empty({GH, I}, opts), dw_hh = at::empty({GH, P}, opts);
  Tensor db = has_bias ? at::empty({GH}, opts) : empty0(opts);
  Tensor dw_hr = p.w_hr.defined() ? at::empty({P, H}, opts) : empty0(opts);
  Tensor dln_ih = ln ? at::empty({GH}, opts) : empty0(opts), dln_hh = ln ? at::empty({GH}, opts) : empty0(opts);
  Tensor dln_c = ln ? at::empty({H}, opts) : empty0(opts), dln_c_b = ln ? at::empty({H}, opts) : empty0(opts);
  Tensor ws = workspace.contiguous(), cl = cells.contiguous(), h0 = hx.contiguous(), c0 = cx.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_options_backward", [&] {
    using T = scalar_t;
    const Layer<T> L = layer_of<T>(p, true, reverse, zoneout);
    options_backward<T>(L, y.data_ptr<T>(), ws.data_ptr<T>(), cl.data_ptr<T>(), h0.data_ptr<T>(),
                        c0.data_ptr<T>(), dy.defined() ? dy.data_ptr<T>() : nullptr,
                        dh.data_ptr<T>(), dc.data_ptr<T>(), need_grad_input ? dx.data_ptr<T>() : nullptr,
                        dw_ih.data_ptr<T>(), dw_hh.data_ptr<T>(), has_bias ? db.data_ptr<T>() : nullptr,
                        nullptr, p.w_hr.defined() ? dw_hr.data_ptr<T>() : nullptr, out_ptr<T>(dln_ih),
                        out_ptr<T>(dln_hh), out_ptr<T>(dln_c), out_ptr<T>(dln_c_b));
  });
  return {dx, dh, dc, dw_ih, dw_hh, db, dw_hr, dln_ih, dln_hh, dln_c, dln_c_b};
}

std::vector<Tensor> gru_options_backward(
    const OptT& grad_output, const OptT& grad_hy, const Tensor& input, const Tensor& hx,
    const Tensor& w_ih, const Tensor& w_hh, const OptT& ln_ih, const OptT& ln_hh, const OptT& rec,
    const OptT& zh, double zoneout, const Tensor& output, const Tensor& workspace,
    const OptT& batch_sizes, bool reverse, bool has_bias, bool need_grad_input) {
  const char* op = "rnnfast::gru_options_backward";
  check_zoneout(op, zoneout);
  Parsed p = parse(op, false, input, hx, nullptr, w_ih, w_hh, std::nullopt, std::nullopt,
                   std::nullopt, ln_ih, ln_hh, std::nullopt, std::nullopt, rec, zh, std::nullopt,
                   batch_sizes);
  const auto opts = input.options();
  const int64_t N = p.d.seq.N, B = p.d.seq.B, H = p.d.H, GH = 3 * H, I = p.d.I;
  const bool ln = p.ln_hh.defined();
  check_saved(op, workspace, N, workspace_cols(false, ln, H));
  Tensor y = output.contiguous().reshape({N, H});
  Tensor dy = rows_of(grad_output, N, H);
  Tensor dh = state_grad(grad_hy, B, H, opts);
  Tensor dx = need_grad_input ? at::empty_like(p.x) : empty0(opts);
  Tensor dw_ih = at::empty({GH, I}, opts), dw_hh = at::empty({GH, H}, opts);
  Tensor db_ih = has_bias ? at::empty({GH}, opts) : empty0(opts);
  Tensor db_hh = has_bias ? at::empty({GH}, opts) : empty0(opts);
  Tensor dln_ih = ln ? at::empty({GH}, opts) : empty0(opts), dln_hh = ln ? at::empty({GH}, opts) : empty0(opts);
  Tensor ws = workspace.contiguous(), h0 = hx.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_options_backward", [&] {
    using T = scalar_t;
    const Layer<T> L = layer_of<T>(p, false, reverse, zoneout);
    options_backward<T>(L, y.data_ptr<T>(), ws.data_ptr<T>(), nullptr, h0.data_ptr<T>(), nullptr,
                        dy.defined() ? dy.data_ptr<T>() : nullptr, dh.data_ptr<T>(), nullptr,
                        need_grad_input ? dx.data_ptr<T>() : nullptr, dw_ih.data_ptr<T>(),
                        dw_hh.data_ptr<T>(), has_bias ? db_ih.data_ptr<T>() : nullptr,
                        has_bias ? db_hh.data_ptr<T>() : nullptr, nullptr, out_ptr<T>(dln_ih),
                        out_ptr<T>(dln_hh), nullptr, nullptr);
  });
  return {dx, dh, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh};
}

}  // namespace
}  // namespace cpu
}  // namespace rnnfast

// The schemas of the option operators (CPU only; rnnfast/ops.py runs rnnfast.reference for
// these options on other devices).
TORCH_LIBRARY_FRAGMENT(rnnfast, m) {
  m.def(
      "lstm_options_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor? ln_ih, Tensor? ln_hh, Tensor? ln_c, "
      "Tensor? ln_c_bias, Tensor? recurrent_mask, Tensor? zoneout_h, Tensor? zoneout_c, "
      "float zoneout, Tensor? batch_sizes, bool reverse, bool need_workspace) -> (Tensor output, "
      "Tensor hy, Tensor cy, Tensor workspace, Tensor cells)");
  m.def(
      "lstm_options_backward(Tensor? grad_output, Tensor? grad_hy, Tensor? grad_cy, Tensor input, "
      "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, Tensor? ln_ih, Tensor? ln_hh, "
      "Tensor? ln_c, Tensor? ln_c_bias, Tensor? recurrent_mask, Tensor? zoneout_h, "
      "Tensor? zoneout_c, float zoneout, Tensor output, Tensor workspace, Tensor cells, "
      "Tensor? batch_sizes, bool reverse, bool has_bias, bool need_grad_input) -> Tensor[]");
  m.def(
      "gru_options_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? ln_ih, Tensor? ln_hh, Tensor? recurrent_mask, Tensor? zoneout_h, "
      "float zoneout, Tensor? batch_sizes, bool reverse, bool need_workspace) -> (Tensor output, "
      "Tensor hy, Tensor workspace)");
  m.def(
      "gru_options_backward(Tensor? grad_output, Tensor? grad_hy, Tensor input, Tensor hx, "
      "Tensor w_ih, Tensor w_hh, Tensor? ln_ih, Tensor? ln_hh, Tensor? recurrent_mask, "
      "Tensor? zoneout_h, float zoneout, Tensor output, Tensor workspace, Tensor? batch_sizes, "
      "bool reverse, bool has_bias, bool need_grad_input) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  m.impl("lstm_options_forward", &rnnfast::cpu::lstm_options_forward);
  m.impl("lstm_options_backward", &rnnfast::cpu::lstm_options_backward);
  m.impl("gru_options_forward", &rnnfast::cpu::gru_options_forward);
  m.impl("gru_options_backward", &rnnfast::cpu::gru_options_backward);
}
