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
// The workspace forward saves for backward: csrc/core/options.h (shared with the CUDA backend).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../core/checks.h"
#include "../core/operators.h"
#include "../core/options.h"
#include "blas.h"
#include "layer.h"
#include "pointwise.h"

#define RNNFAST_ISA options_layer
#include "fast_math.h"

namespace rnnfast {
namespace cpu {
namespace {

using at::Tensor;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// A buffer of n values, not initialised (every element is written before it is read).
template <typename T>
struct Buffer {
  std::unique_ptr<T, FreeDeleter> p;
  explicit Buffer(int64_t n) {
    if (n <= 0) return;
    const size_t bytes = sizeof(T) * static_cast<size_t>(n);
    const size_t align = bytes >= kHugePageMinBytes ? kHugePage : 64;
    void* q = std::aligned_alloc(align, (bytes + align - 1) / align * align);
    TORCH_CHECK(q != nullptr, "rnnfast: out of memory allocating ", bytes, " bytes");
    if (align == kHugePage) advise_huge_pages(q, bytes);
    p.reset(static_cast<T*>(q));
  }
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

// Column sums over the rows of A [rows, cols] (row stride lda) for up to three outputs at
// once: out_j[k] = sum over rows i of A[i, k] * B_j[i, k] (B_j nullptr: of A[i, k] alone),
// rows in order, in double. Each thread takes a contiguous block of columns and streams the
// rows (its accumulators stay in L1), so every sum has one order whatever the thread count.
template <typename T>
struct ColumnSum {
  T* out;
  const T* B;   // [rows, ldb] or nullptr
  int64_t ldb;
};

template <typename T>
inline __attribute__((always_inline)) void accumulate_row(int64_t n, double* __restrict acc,
                                                          const T* __restrict a,
                                                          const T* __restrict b) {
  if (b != nullptr) {
    for (int64_t k = 0; k < n; ++k) acc[k] += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) acc[k] += static_cast<double>(a[k]);
  }
}

template <typename T>
inline __attribute__((always_inline)) void column_block_sums(const T* A, int64_t lda,
                                                             int64_t rows, int64_t k0, int64_t n,
                                                             const ColumnSum<T>* sums, int m) {
  std::vector<double> acc(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    const T* a = A + i * lda + k0;
    for (int j = 0; j < m; ++j)
      accumulate_row(n, acc.data() + j * n, a,
                     sums[j].B != nullptr ? sums[j].B + i * sums[j].ldb + k0 : nullptr);
  }
  for (int j = 0; j < m; ++j)
    for (int64_t k = 0; k < n; ++k) sums[j].out[k0 + k] = static_cast<T>(acc[j * n + k]);
}

RNNFAST_CLONES void column_block_sums_f32(const float* A, int64_t lda, int64_t rows, int64_t k0,
                                          int64_t n, const ColumnSum<float>* sums, int m) {
  column_block_sums(A, lda, rows, k0, n, sums, m);
}
void column_block_sums_of(const float* A, int64_t lda, int64_t rows, int64_t k0, int64_t n,
                          const ColumnSum<float>* sums, int m) {
  column_block_sums_f32(A, lda, rows, k0, n, sums, m);
}
void column_block_sums_of(const double* A, int64_t lda, int64_t rows, int64_t k0, int64_t n,
                          const ColumnSum<double>* sums, int m) {
  column_block_sums(A, lda, rows, k0, n, sums, m);
}

template <typename T>
void column_sums(const T* A, int64_t lda, int64_t rows, int64_t cols,
                 std::initializer_list<ColumnSum<T>> terms) {
  std::vector<ColumnSum<T>> sums;
  for (const ColumnSum<T>& t : terms)
    if (t.out != nullptr) sums.push_back(t);
  if (sums.empty() || cols == 0) return;
  constexpr int64_t kBlock = 16;
  at::parallel_for(0, (cols + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    const int64_t k0 = b0 * kBlock, k1 = std::min(cols, b1 * kBlock);
    column_block_sums_of(A, lda, rows, k0, k1 - k0, sums.data(), static_cast<int>(sums.size()));
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
  core::OptionLayout layout() const { return {lstm, ln(), H}; }
  int64_t xhat_ih_col() const { return layout().xhat_ih_col(); }
  int64_t rstd_ih_col() const { return layout().rstd_ih_col(); }
  int64_t xhat_hh_col() const { return layout().xhat_hh_col(); }
};

int64_t workspace_cols(bool lstm, bool ln, int64_t H) { return core::OptionLayout{lstm, ln, H}.cols(); }

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
  release_panel_buffers();  // the plain layers' held panels: not through a training peak
  const Sequence& s = *L.s;
  const int64_t H = L.H, P = L.P, B = s.B, N = s.N, G = L.G(), GH = G * H;
  advise_huge_pages(y, sizeof(T) * N * P);
  if (ws != nullptr) advise_huge_pages(ws, sizeof(T) * N * L.ws_ld);
  if (cells != nullptr) advise_huge_pages(cells, sizeof(T) * N * H);
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
  release_panel_buffers();
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
  // The bias and gain gradients: one pass over each gradient buffer (the LSTM's dgh is dgx).
  const ColumnSum<T> ln_ih_sum{dln_ih, ws + L.xhat_ih_col(), L.ws_ld};
  const ColumnSum<T> ln_hh_sum{dln_hh, ws + L.xhat_hh_col(), L.ws_ld};
  if (L.lstm) {
    column_sums<T>(dgx.data(), GH, N, GH, {{db_ih, nullptr, 0}, ln_ih_sum, ln_hh_sum});
  } else {
    column_sums<T>(dgx.data(), GH, N, GH, {{db_ih, nullptr, 0}, ln_ih_sum});
    column_sums<T>(dgh, GH, N, GH, {{db_hh, nullptr, 0}, ln_hh_sum});
  }
  if (ln) {
    if (L.lstm)
      column_sums<T>(dchat.data(), H, N, H, {{dln_c, ws + 4 * H, L.ws_ld}, {dln_c_b, nullptr, 0}});
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


template <typename T>
const T* ptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

using core::check_saved;
using core::check_zoneout;
using Parsed = core::OptionArgs;

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

// The executor of core::OptionOperators on the CPU.
struct CpuOptions {
  static constexpr Dtypes kDtypes = kCpuDtypes;
  using Guard = core::NoDeviceGuard;
  template <typename T>
  static void forward(const core::OptionForward<T>& a) {
    const Layer<T> L = layer_of<T>(*a.p, a.lstm, a.reverse, a.zp);
    options_forward<T>(L, a.y, a.h, a.c, a.ws, a.cells);
  }
  template <typename T>
  static void backward(const core::OptionBackward<T>& a) {
    const Layer<T> L = layer_of<T>(*a.p, a.lstm, a.reverse, a.zp);
    options_backward<T>(L, a.y, a.ws, a.cells, a.hx, a.cx, a.dy, a.dh, a.dc, a.dx, a.dw_ih,
                        a.dw_hh, a.db_ih, a.db_hh, a.dw_hr, a.dln_ih, a.dln_hh, a.dln_c,
                        a.dln_c_b);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace rnnfast

// The schemas of the option operators (csrc/core/options.h).
TORCH_LIBRARY_FRAGMENT(rnnfast, m) {
  for (const char* schema : rnnfast::core::kOptionSchemas) m.def(schema);
}

TORCH_LIBRARY_IMPL(rnnfast, CPU, m) {
  rnnfast::core::register_option_operators<rnnfast::cpu::CpuOptions>(m);
}
