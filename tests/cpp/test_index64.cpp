// 64-bit index arithmetic of the CPU layer bookkeeping (csrc/core/sequence.h): row offsets,
// row counts and step order for sequences whose total row count passes 2^31 and 2^32,
// without allocating them (the inputs are zero-stride expanded views; make_sequence reads
// only their sizes). Complements tests/test_long.py, which runs the forward kernel over an
// input of more than 2^32 elements.
//
// Register in CMakeLists.txt (inside `if(RNNFAST_BUILD_TESTS)`):
//   add_executable(test_index64 tests/cpp/test_index64.cpp)
//   target_link_libraries(test_index64 PRIVATE rnnfast)
//   add_test(NAME index64 COMMAND test_index64)
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "cpu/layer.h"
#include "core/sequence.h"

namespace {

using rnnfast::core::make_sequence;
using rnnfast::core::Sequence;

int g_failures = 0;

#define EXPECT_EQ(a, b)                                                                 \
  do {                                                                                  \
    const auto va = (a);                                                                \
    const auto vb = (b);                                                                \
    if (!(va == vb)) {                                                                  \
      ++g_failures;                                                                     \
      std::printf("FAIL %s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a, \
                  static_cast<long long>(va), #b, static_cast<long long>(vb));          \
    }                                                                                   \
  } while (0)

constexpr int64_t k2_31 = int64_t{1} << 31;
constexpr int64_t k2_32 = int64_t{1} << 32;

// A (sizes...) float tensor that owns one element: every element aliases it.
at::Tensor expanded(at::IntArrayRef sizes) {
  std::vector<int64_t> ones(sizes.size(), 1);
  return at::zeros(ones, at::kFloat).expand(sizes);
}

// Padded (T, B, I): T * B rows past 2^32; the offset of the last step is (T-1) * B.
void test_padded() {
  const int64_t T = (int64_t{1} << 20) + 1, B = int64_t{1} << 12, I = 3;
  const Sequence s = make_sequence("test", expanded({T, B, I}), std::nullopt);
  EXPECT_EQ(s.T, T);
  EXPECT_EQ(s.B, B);
  EXPECT_EQ(s.N, T * B);
  EXPECT_EQ(s.N, k2_32 + B);
  EXPECT_EQ(static_cast<int64_t>(s.off.size()), T);
  EXPECT_EQ(s.off[T - 1], k2_32);                      // (2^20) * 2^12
  EXPECT_EQ(s.off[T / 2], (T / 2) * B);                // 2^31
  EXPECT_EQ(s.off[T / 2], k2_31);
  EXPECT_EQ(s.bs[T - 1], B);
  // element offsets of a row as the kernels form them (row * I), past 2^33
  EXPECT_EQ(s.off[T - 1] * I, 3 * k2_32);
  // the reverse direction visits the same steps backwards
  EXPECT_EQ(s.time_at(0, true), T - 1);
  EXPECT_EQ(s.time_at(T - 1, true), 0);
  EXPECT_EQ(s.prev_of(T - 2, true), T - 1);
  EXPECT_EQ(s.prev_of(T - 1, true), -1);
  EXPECT_EQ(s.prev_of(0, false), -1);
}

// Packed: batch_sizes (2^31, 2^31, 7) -> offsets 0, 2^31, 2^32 and N = 2^32 + 7.
void test_packed() {
  const std::vector<int64_t> bs{k2_31, k2_31, 7};
  const at::Tensor batch_sizes = at::tensor(bs, at::kLong);
  const Sequence s = make_sequence("test", expanded({k2_32 + 7, 2}), batch_sizes);
  EXPECT_EQ(s.T, 3);
  EXPECT_EQ(s.B, k2_31);
  EXPECT_EQ(s.N, k2_32 + 7);
  EXPECT_EQ(s.off[0], 0);
  EXPECT_EQ(s.off[1], k2_31);
  EXPECT_EQ(s.off[2], k2_32);
  EXPECT_EQ(s.bs[2], 7);
}

// Many steps: a packed sequence of 3 * 2^20 steps of 2^11 rows each (total 3 * 2^31).
void test_packed_many_steps() {
  const int64_t T = 3 * (int64_t{1} << 20), b = int64_t{1} << 11;
  const at::Tensor batch_sizes = at::full({T}, b, at::kLong);
  const Sequence s = make_sequence("test", expanded({T * b, 1}), batch_sizes);
  EXPECT_EQ(s.N, 3 * k2_31);
  EXPECT_EQ(s.off[T - 1], 3 * k2_31 - b);
  EXPECT_EQ(s.off[T / 3 * 2], k2_32);
}

// The consistency check reports the 64-bit sum (an int32 accumulator would wrap).
void test_error_reports_64_bit_sum() {
  const std::vector<int64_t> bs{k2_31, k2_31, 5};
  bool threw = false;
  try {
    make_sequence("test", expanded({3, 1}), at::tensor(bs, at::kLong));
  } catch (const c10::Error& e) {
    threw = true;
    const std::string msg = e.what();
    if (msg.find("batch_sizes sum to 4294967301 but the packed input has 3 rows") ==
        std::string::npos) {
      ++g_failures;
      std::printf("FAIL error message: %s\n", msg.c_str());
    }
  }
  EXPECT_EQ(threw, true);
}

// Input-projection chunking: chunk rows never exceed 128 * B, whatever B.
void test_chunk_steps() {
  EXPECT_EQ(rnnfast::cpu::input_chunk_steps(1), 128);
  EXPECT_EQ(rnnfast::cpu::input_chunk_steps(0), 128);
  EXPECT_EQ(rnnfast::cpu::input_chunk_steps(128), 1);
  EXPECT_EQ(rnnfast::cpu::input_chunk_steps(k2_31), 1);
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<void()>> cases{
      {"padded", test_padded},
      {"packed", test_packed},
      {"packed_many_steps", test_packed_many_steps},
      {"error_sum", test_error_reports_64_bit_sum},
      {"chunk_steps", test_chunk_steps}};
  int ran = 0;
  for (const auto& [name, fn] : cases) {
    if (argc > 1 && name != argv[1]) continue;
    fn();
    ++ran;
  }
  if (ran == 0) {
    std::printf("unknown case '%s'\n", argv[1]);
    return 2;
  }
  std::printf("%s\n", g_failures == 0 ? "OK" : "FAILED");
  return g_failures == 0 ? 0 : 1;
}
