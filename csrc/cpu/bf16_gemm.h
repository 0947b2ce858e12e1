// bfloat16 products for the step loops on CPUs with AMX-BF16 tiles or AVX512-BF16 (float32
// accumulation).
//
//   C[M, N] = bf16(X)[M, K] bf16(op(W))[K, N]          (AmxInit::kZero; C is not read)
//   C[M, N] = C + bf16(X)[M, K] bf16(op(W))[K, N]      (AmxInit::kAccumulate)
//   C[M, N] = bias[N] + bf16(X)[M, K] bf16(op(W))[K, N] (AmxInit::kBias, the row repeated)
//
// bf16(v) rounds float32 to bfloat16, to nearest even: exact for values that are bfloat16
// already (the layer's weights and inputs when the layer runs in bfloat16), the one rounding
// of the running state h_{t-1} otherwise. With two terms, X is taken as the sum of two
// bfloat16 values, hi = bf16(x) and lo = bf16(x - hi) (16 significant bits, relative error
// about 2^-17), each multiplied by op(W): twice the work, for the gate gradients of
// backward, whose rounding error would otherwise compound over the steps. Each
// product is accumulated in float32 by the tile unit (TDPBF16PS: pairs of k multiplied
// exactly and added in float32) onto the start value (0, C or the bias), the k blocks in
// ascending order, so every element of C
// depends only on its row of X and its column of op(W): the same bits however the rows or
// columns are split across threads.
//
// op(W) is packed once per layer call into B tiles of 16 columns by 32 k (1 KiB each, the
// pairs of k interleaved as the tile unit reads them):
//
//   tiles[j][kb][r][2 c + e] = bf16(op(W)[kb * 32 + 2 r + e][j * 16 + c])
//     j < ceil(N / 16), kb < ceil(K / 32), r < 16, c < 16, e < 2    (zeros past N and K)
//
// and each call rounds its rows of X into a [ceil(M / 16) * 16, ceil(K / 32) * 32] bfloat16
// buffer (the A tiles), then runs blocks of up to 32 x 32 (2 x 2 C tiles) or 16 x 48
// (1 x 3) of C through the tiles.
//
// Legend: M rows of X and C, N output columns, K the reduction, ld row strides.
#pragma once

#include <cstdint>
#include <cstring>

namespace rnnfast {
namespace cpu {

// Which kernel multiplies: AMX tiles (TDPBF16PS) where the CPU has AMX-BF16 and the OS
// lets this process use the tile registers (asked once, with arch_prctl), else AVX512-BF16
// dot products (VDPBF16PS on the same packed operands) where the CPU has AVX512-BF16, else
// none (the bfloat16 layers then multiply up-converted values in float32).
// RNNFAST_CPU_BF16=fp32 selects none, RNNFAST_CPU_BF16=avx512_bf16 the dot products on an
// AMX CPU.
//
// The dot products: for column tile j, the packed k pairs of op(W) are 64-byte rows one
// after another (pair p at byte (j * ceil(K / 32) * 16 + p) * 64), each 16 columns x one
// pair, which is VDPBF16PS's second operand; the pair of a row of X is one 32-bit
// broadcast. Register blocks of up to 12 rows x 2 column tiles (8 tiles for one row, 4 for
// up to four), the column tiles outermost; C starts from zero, C or the bias row, and the
// pairs are added in ascending k, so as with the tiles every element depends only on its
// row of X and its column of op(W). (The two kernels' sums of one pair may round apart:
// VDPBF16PS adds the odd product first.)
enum class Bf16Kernel { kNone = 0, kDot = 1, kAmx = 2 };
Bf16Kernel bf16_kernel();
const char* bf16_kernel_name(Bf16Kernel k);  // "amx", "avx512_bf16", "fp32"
bool bf16_kernels_usable();                   // bf16_kernel() != kNone
// Whether a bfloat16 layer call (the Elman RNN or not, `batch` rows per step at most, a
// thread's slice of W_hh taking w_hh_bytes in float32) runs its products on bf16_kernel():
// always on AMX; with the dot products, every call where VDPBF16PS retires at least
// kDotFullRate times the multiply-adds a second of FMA on this CPU (bf16_dot_rate(): AMD
// Zen 4 measured 2.0, a full-rate instruction there), else only the LSTM and GRU at batch <=
// kDotMaxBatch (1) whose float32 W_hh slice takes at least batch * kDotBytesPerRow: there a
// step is bound by reading W_hh from beyond L2, and the dot products read half the bytes. At
// 2 to 8 rows the widened path's bfloat16 panels (panel_gemm.h PanelGemmBf16W) read half the
// bytes too, at FMA's full rate. (On the Emerald Rapids Xeon without AMX, rate 0.5, 2
// threads, time over rnnfast float32's, dot products / widened on bfloat16 panels: LSTM
// inference H 512 batch 1 0.61/0.70, batch 2 0.84/0.79, H 1024 batch 1 0.60/0.67, batch 2
// 0.68/0.69, batch 4 0.85/0.65; training H 512 batch 2 1.00/0.79, H 1024 batch 4 1.07/0.83;
// the GRU at H 512 batch 1, whose 1.5 MiB slice keeps float32 panels, 0.81/1.09; the
// two-term products of the Elman RNN lost everywhere.) Every call when the kernel was asked
// for (RNNFAST_CPU_BF16 or bf16_select_kernel). Elsewhere the widened path or the float32
// path on copies runs.
constexpr int64_t kDotMaxBatch = 1;
constexpr int64_t kDotBytesPerRow = int64_t(1) << 20;
constexpr double kDotFullRate = 1.5;
bool bf16_kernels_for(bool plain_rnn, int64_t batch, int64_t w_hh_bytes);
// VDPBF16PS's multiply-adds a second over FMA's (VFMADD231PS), both on 512-bit registers,
// measured once on first use: register-only loops of 12 independent accumulators on the
// calling thread, interleaved, the fastest of 9 runs each (about 0.1 ms in all). 0 where the
// CPU has no AVX512-BF16. Testing: bf16_set_dot_rate(r) replaces it (r < 0: measured again
// on next use).
double bf16_dot_rate();
void bf16_set_dot_rate(double rate);
// Testing: selects kernel k from now on if this CPU has it (true), else false; forced: for
// every call, else by the rule of bf16_kernels_for. kNone forced: every call on up-converted
// copies (bf16_copies_only); not forced: as a CPU without a bfloat16 kernel chooses (the
// widened path where the kernel set allows it).
bool bf16_select_kernel(Bf16Kernel k, bool forced = true);
// Testing: back to the selection made at start-up (the CPU's and RNNFAST_CPU_BF16's).
void bf16_reset_kernel();
// The widened path (backend.cpp): a layer call that bf16_kernels_for leaves out (every call,
// on a CPU without a bfloat16 kernel) keeps the bfloat16 data path (x, the outputs, the saved
// rows and the gate gradients stay bfloat16, read in place) and runs its products in
// float32: the step products on float32 panels packed from the bfloat16 weights, the
// whole-sequence products on operands widened a block of rows at a time, so that no whole
// float32 copy exists. It needs the panel micro-kernel (the avx2 and avx512 kernel sets).
// bf16_select_widened() (testing) or RNNFAST_CPU_BF16=widened sends every call there
// (bf16_kernels_for is then false); bf16_widened_only() says whether that selection is in
// force. bf16_select_kernel(kNone) or RNNFAST_CPU_BF16=fp32 sends every call to the float32
// path on up-converted copies instead; bf16_copies_only() says whether that is in force.
void bf16_select_widened();
bool bf16_widened_only();
bool bf16_copies_only();

// Bytes of the packed op(W) for N columns and K rows.
int64_t amx_packed_bytes(int64_t N, int64_t K);

// Bytes of the A buffer for up to M_max rows of K, as `terms` (1 or 2) bfloat16 values.
int64_t amx_rows_bytes(int64_t M_max, int64_t K, int terms);

// Packs op(W) into B tiles from its float32 panels (panel_gemm.h's layout: panels[j][k][c]
// = op(W)[k][j * 16 + c]). `tiles` is 64-byte aligned, amx_packed_bytes(N, K) long.
void amx_pack_from_panels(int64_t N, int64_t K, const float* panels, void* tiles);

// Packs op(W) = W^T into B tiles straight from bfloat16 W (bit patterns, row stride ldw):
// column n of op(W) is row (n / per_group) * group_stride + n % per_group of W (the
// grouped rows of PackedWeight; per_group = N and any stride for plain W^T).
void amx_pack_bf16_rows(int64_t N, int64_t K, const uint16_t* W, int64_t ldw, int64_t per_group,
                        int64_t group_stride, void* tiles);

// Packs op(W) = W into B tiles straight from bfloat16 W (bit patterns): op(W)[k][n] =
// W[k * ldw + n], k < K, n < N (a column slice of a row-major weight, as the backward's
// dh = dG W_hh reads it).
void amx_pack_bf16_cols(int64_t N, int64_t K, const uint16_t* W, int64_t ldw, void* tiles);

// dst[r, c] = bf16(src[r, c]) for rows x cols float32 values (row strides in values),
// rounded to nearest even by the CPU's AVX512-BF16 conversion (as the A tiles are); only
// where bf16_round_native().
void bf16_round_rows(int64_t rows, int64_t cols, const float* src, int64_t ld_src, uint16_t* dst,
                     int64_t ld_dst);
// Whether this CPU has the AVX512-BF16 conversion bf16_round_rows uses.
bool bf16_round_native();
// The same rounding in integer arithmetic, vectorised for the CPU at hand (blas.cpp): to
// nearest even, a NaN kept a quiet NaN. It differs from bf16_round_rows only where that
// instruction flushes: a subnormal input, or a result below the smallest normal value.
void bf16_round_rows_portable(int64_t rows, int64_t cols, const float* src, int64_t ld_src,
                              uint16_t* dst, int64_t ld_dst);

// The float32 value of a bfloat16 bit pattern (exact).
inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// dst[r, c] = float(src[r, c]) for rows x cols bfloat16 bit patterns (exact; any CPU, in
// its widest vectors: blas.cpp).
void bf16_widen_rows(int64_t rows, int64_t cols, const uint16_t* src, int64_t ld_src, float* dst,
                     int64_t ld_dst);

// How C starts before the products are added to it: zeros, C itself, or a bias row
// bias[N] repeated on every row.
enum class AmxInit { kZero, kAccumulate, kBias };

// The product (see above), C = start + bf16(X) bf16(op(W)). `rows` is a 64-byte aligned
// buffer of amx_rows_bytes(M, K, terms); bias is read with AmxInit::kBias only.
void amx_gemm_f32(int64_t M, int64_t N, int64_t K, const void* tiles, const float* X, int64_t ldx,
                  AmxInit init, const float* bias, float* C, int64_t ldc, void* rows, int terms);

// The same with X bfloat16 already (bit patterns, row stride ldx values): one term, no
// rounding, no float32 copy of X.
void amx_gemm_bf16(int64_t M, int64_t N, int64_t K, const void* tiles, const uint16_t* X,
                   int64_t ldx, AmxInit init, const float* bias, float* C, int64_t ldc,
                   void* rows);

}  // namespace cpu
}  // namespace rnnfast
