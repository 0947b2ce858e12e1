// C++ tests of the CPU LSTM operators through the dispatcher, with no Python
// (and, case "emulated", of the CUDA LSTM operators in the SIMT emulator):
// forward against ATen's own at::lstm, backward against libtorch autograd through
// at::lstm. Run by ctest (see CMakeLists.txt): `test_lstm_cpu <case>`.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "build_info.h"
#include "cpu/layer.h"

namespace {

using at::Tensor;
using OptT = std::optional<Tensor>;
using FwdOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using BwdOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

int g_failures = 0;
// The operator namespace under test: "rnnfast" (the CPU kernels), or "rnnfast_emu" (the
// CUDA kernels in the SIMT emulator, from librnnfast_simt_emu).
std::string g_ns = "rnnfast";

void expect_close(const char* what, const Tensor& a, const Tensor& b, double atol, double rtol) {
  const bool ok = a.sizes() == b.sizes() && at::allclose(a, b, rtol, atol);
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s: max |diff| %g (shapes %s vs %s)\n", what,
                a.sizes() == b.sizes() ? (a - b).abs().max().item<double>() : -1.0,
                c10::str(a.sizes()).c_str(), c10::str(b.sizes()).c_str());
  }
}

FwdOut lstm_forward(const Tensor& x, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                    const Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const OptT& w_hr,
                    const OptT& batch_sizes, bool reverse, bool need_workspace) {
  const auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow((g_ns + "::lstm_forward").c_str(), "")
                       .typed<FwdOut(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const Tensor&, const OptT&, const OptT&, const OptT&,
                                     const OptT&, bool, bool)>();
  return op.call(x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, need_workspace);
}

BwdOut lstm_backward(const OptT& dy, const OptT& dhy, const OptT& dcy, const Tensor& x,
                     const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
                     const OptT& w_hr, const Tensor& y, const Tensor& gates, const Tensor& cells,
                     const OptT& batch_sizes, bool reverse, bool has_bias, bool need_dx) {
  const auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow((g_ns + "::lstm_backward").c_str(), "")
                       .typed<BwdOut(const OptT&, const OptT&, const OptT&, const Tensor&,
                                     const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const OptT&, const Tensor&, const Tensor&, const Tensor&,
                                     const OptT&, bool, bool, bool)>();
  return op.call(dy, dhy, dcy, x, hx, cx, w_ih, w_hh, w_hr, y, gates, cells, batch_sizes, reverse,
                 has_bias, need_dx);
}

struct Params {
  Tensor w_ih, w_hh, b_ih, b_hh, w_hr;
};

Params make_params(int64_t I, int64_t H, int64_t P, bool proj, at::ScalarType dt) {
  auto o = at::TensorOptions().dtype(dt);
  Params p;
  p.w_ih = at::randn({4 * H, I}, o) * 0.3;
  p.w_hh = at::randn({4 * H, proj ? P : H}, o) * 0.3;
  p.b_ih = at::randn({4 * H}, o) * 0.3;
  p.b_hh = at::randn({4 * H}, o) * 0.3;
  if (proj) p.w_hr = at::randn({P, H}, o) * 0.3;
  return p;
}

// One layer, one direction, through at::lstm (reverse = flip time for padded input).
std::vector<Tensor> reference(const Tensor& x, const Tensor& hx, const Tensor& cx, const Params& p,
                              bool reverse) {
  std::vector<Tensor> params{p.w_ih, p.w_hh, p.b_ih, p.b_hh};
  if (p.w_hr.defined()) params.push_back(p.w_hr);
  Tensor xin = reverse ? x.flip(0) : x;
  auto r = at::lstm(xin, {hx.unsqueeze(0), cx.unsqueeze(0)}, params, true, 1, 0.0, false, false,
                    false);
  Tensor y = std::get<0>(r);
  if (reverse) y = y.flip(0);
  return {y, std::get<1>(r).squeeze(0), std::get<2>(r).squeeze(0)};
}

void test_forward() {
  for (auto dt : {at::kFloat, at::kDouble}) {
    const double atol = dt == at::kFloat ? 1e-5 : 1e-12, rtol = dt == at::kFloat ? 1e-4 : 1e-10;
    for (bool proj : {false, true}) {
      for (bool reverse : {false, true}) {
        const int64_t T = 5, B = 3, I = 7, H = 9, P = proj ? 4 : H;
        auto o = at::TensorOptions().dtype(dt);
        Params p = make_params(I, H, P, proj, dt);
        Tensor x = at::randn({T, B, I}, o), hx = at::randn({B, P}, o), cx = at::randn({B, H}, o);
        auto got = lstm_forward(x, hx, cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh,
                                proj ? OptT(p.w_hr) : std::nullopt, std::nullopt, reverse, false);
        auto want = reference(x, hx, cx, p, reverse);
        expect_close("forward output", std::get<0>(got), want[0], atol, rtol);
        expect_close("forward hy", std::get<1>(got), want[1], atol, rtol);
        expect_close("forward cy", std::get<2>(got), want[2], atol, rtol);
      }
    }
  }
}

void test_backward() {
  const at::ScalarType dt = at::kDouble;
  for (bool proj : {false, true}) {
    for (bool reverse : {false, true}) {
      const int64_t T = 4, B = 3, I = 5, H = 6, P = proj ? 2 : H;
      auto o = at::TensorOptions().dtype(dt);
      Params p = make_params(I, H, P, proj, dt);
      Tensor x = at::randn({T, B, I}, o), hx = at::randn({B, P}, o), cx = at::randn({B, H}, o);
      Tensor dy = at::randn({T, B, P}, o), dhy = at::randn({B, P}, o), dcy = at::randn({B, H}, o);
      // Reference gradients: autograd through at::lstm.
      std::vector<Tensor> leaves{x, hx, cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh};
      if (proj) leaves.push_back(p.w_hr);
      std::vector<Tensor> vars;
      for (auto& t : leaves) vars.push_back(t.detach().requires_grad_(true));
      Params q{vars[3], vars[4], vars[5], vars[6], proj ? vars[7] : Tensor()};
      auto want = reference(vars[0], vars[1], vars[2], q, reverse);
      auto grads = torch::autograd::grad({want[0], want[1], want[2]}, vars, {dy, dhy, dcy});
      // rnnfast: forward with workspace, then the backward operator.
      const OptT w_hr = proj ? OptT(p.w_hr) : std::nullopt;
      auto f = lstm_forward(x, hx, cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, w_hr, std::nullopt, reverse,
                            true);
      auto g = lstm_backward(dy, dhy, dcy, x, hx, cx, p.w_ih, p.w_hh, w_hr, std::get<0>(f),
                             std::get<3>(f), std::get<4>(f), std::nullopt, reverse, true, true);
      const double atol = 1e-10, rtol = 1e-8;
      expect_close("grad input", std::get<0>(g), grads[0], atol, rtol);
      expect_close("grad hx", std::get<1>(g), grads[1], atol, rtol);
      expect_close("grad cx", std::get<2>(g), grads[2], atol, rtol);
      expect_close("grad w_ih", std::get<3>(g), grads[3], atol, rtol);
      expect_close("grad w_hh", std::get<4>(g), grads[4], atol, rtol);
      expect_close("grad b_ih", std::get<5>(g), grads[5], atol, rtol);
      expect_close("grad b_hh", std::get<5>(g), grads[6], atol, rtol);
      if (proj) expect_close("grad w_hr", std::get<6>(g), grads[7], atol, rtol);
    }
  }
}

// Packed input: each sequence alone through at::lstm must match its rows of the
// packed run, in both directions.
void test_packed() {
  const at::ScalarType dt = at::kDouble;
  const std::vector<int64_t> lengths{5, 3, 3, 1};
  const int64_t B = 4, I = 3, H = 5, T = 5;
  auto o = at::TensorOptions().dtype(dt);
  Params p = make_params(I, H, H, false, dt);
  Tensor padded = at::randn({T, B, I}, o), hx = at::randn({B, H}, o), cx = at::randn({B, H}, o);
  std::vector<int64_t> bs(T, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t len : lengths) bs[t] += len > t ? 1 : 0;
  std::vector<Tensor> rows;
  for (int64_t t = 0; t < T; ++t) rows.push_back(padded[t].narrow(0, 0, bs[t]));
  Tensor packed = at::cat(rows, 0);
  Tensor batch_sizes = at::tensor(bs, at::kLong);
  for (bool reverse : {false, true}) {
    auto got = lstm_forward(packed, hx, cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, std::nullopt,
                            batch_sizes, reverse, false);
    int64_t off = 0;
    std::vector<int64_t> offs;
    for (int64_t t = 0; t < T; ++t) {
      offs.push_back(off);
      off += bs[t];
    }
    for (int64_t j = 0; j < B; ++j) {
      const int64_t L = lengths[j];
      Tensor xj = padded.narrow(0, 0, L).select(1, j).unsqueeze(1);
      auto want = reference(xj, hx.narrow(0, j, 1), cx.narrow(0, j, 1), p, reverse);
      std::vector<Tensor> yj;
      for (int64_t t = 0; t < L; ++t) yj.push_back(std::get<0>(got)[offs[t] + j].unsqueeze(0));
      expect_close("packed output", at::stack(yj, 0), want[0], 1e-12, 1e-10);
      expect_close("packed hy", std::get<1>(got).narrow(0, j, 1), want[1], 1e-12, 1e-10);
      expect_close("packed cy", std::get<2>(got).narrow(0, j, 1), want[2], 1e-12, 1e-10);
    }
  }
}

void expect_throws(const char* what, const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
  } catch (const c10::Error& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) {
      ++g_failures;
      std::printf("FAIL %s: message lacks '%s': %s\n", what, needle.c_str(), e.what());
    }
    return;
  }
  ++g_failures;
  std::printf("FAIL %s: no error raised\n", what);
}

void test_errors() {
  auto o = at::TensorOptions().dtype(at::kFloat);
  Params p = make_params(3, 4, 4, false, at::kFloat);
  Tensor x = at::randn({2, 2, 3}, o), hx = at::zeros({2, 4}, o), cx = at::zeros({2, 4}, o);
  expect_throws("wrong hx shape", [&] {
    lstm_forward(x, at::zeros({3, 4}, o), cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, std::nullopt,
                 std::nullopt, false, false);
  }, "expected hx of shape");
  expect_throws("integer input", [&] {
    lstm_forward(x.to(at::kInt), hx, cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, std::nullopt,
                 std::nullopt, false, false);
  }, "float32, float64 and bfloat16");
  expect_throws("bad batch_sizes", [&] {
    lstm_forward(x.reshape({4, 3}), hx, cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, std::nullopt,
                 at::tensor(std::vector<int64_t>{1, 3}, at::kLong), false, false);
  }, "non-increasing");
  expect_throws("backward without workspace", [&] {
    auto f = lstm_forward(x, hx, cx, p.w_ih, p.w_hh, p.b_ih, p.b_hh, std::nullopt, std::nullopt,
                          false, false);
    lstm_backward(std::nullopt, std::nullopt, std::nullopt, x, hx, cx, p.w_ih, p.w_hh,
                  std::nullopt, std::get<0>(f), std::get<3>(f), std::get<4>(f), std::nullopt,
                  false, true, true);
  }, "need_workspace=True");
}

// The same checks through the CUDA kernels and orchestration, run in the SIMT
// emulator (the rnnfast_emu operators).
void test_emulated() {
  g_ns = "rnnfast_emu";
  test_forward();
  test_backward();
  test_packed();
  g_ns = "rnnfast";
}

// The step barrier's stall accounting (cpu/layer.h StepSync, which the load monitor judges):
// a thread that reaches the first barrier late is the region starting up (a worker thread
// woken from sleep), not a lost time slice, and is not counted; the same delay before a
// later barrier is.
void test_step_sync() {
#ifdef _OPENMP
  constexpr int64_t kDelayNs = 5'000'000;
  for (const int late_barrier : {0, 3}) {
    std::vector<int64_t> stalled(16, 0);
    int team = 0;
#pragma omp parallel num_threads(2)
    {
      const int tid = omp_get_thread_num();
      if (tid == 0) team = omp_get_num_threads();
      rnnfast::cpu::StepSync sync(&stalled[static_cast<size_t>(tid) * 8]);
      for (int b = 0; b < 6; ++b) {
        if (tid == 1 && b == late_barrier) std::this_thread::sleep_for(std::chrono::nanoseconds(kDelayNs));
        sync.barrier();
      }
    }
    if (team != 2) {
      std::printf("step_sync: skipped, OpenMP gave %d thread(s), not 2\n", team);
      return;
    }
    const bool ok = late_barrier == 0 ? stalled[0] < kDelayNs / 2 : stalled[0] >= kDelayNs * 4 / 5;
    std::printf("step_sync: thread 1 late at barrier %d: thread 0 stalled %.3f ms  %s\n", late_barrier,
                stalled[0] * 1e-6, ok ? "ok" : "FAIL");
    if (!ok) ++g_failures;
  }
#else
  std::printf("step_sync: skipped, built without OpenMP\n");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<void()>> cases{
      {"forward", test_forward}, {"backward", test_backward},
      {"packed", test_packed},   {"errors", test_errors},
      {"emulated", test_emulated}, {"step_sync", test_step_sync}};
  at::manual_seed(0);
  std::printf("rnnfast %s, CPU kernels: %s\n", rnnfast::build_info()["version"].c_str(),
              rnnfast::build_info()["cpu_kernels"].c_str());
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
