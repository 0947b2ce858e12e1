// The CUDA operators run in the SIMT emulator on CPU tensors (testing only).
//
// When emulation is on, the CPU registrations of the rnnfast operators route to
// the CUDA host orchestration and kernels (csrc/cuda/rnn_host.h,
// csrc/kernels/rnn_device.cuh) compiled for the emulator, instead of the CPU
// kernels. Python: rnnfast.testing.emulate_cuda(). It is a process-wide switch;
// emulation is slow (every CUDA thread is a fiber) and meant for small sizes.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace rnnfast {

bool simt_emulation();
void set_simt_emulation(bool on);
// Whether the emulator was built with CUDA's half types (cuda_fp16.h found).
bool simt_has_half();

namespace simt_emu {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& batch_sizes, bool reverse, bool need_workspace);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const OptTensor& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& w_hr, const Tensor& output, const Tensor& gates,
    const Tensor& cells, const OptTensor& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input);
std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& input, const Tensor& hx,
                                               const Tensor& w_ih, const Tensor& w_hh,
                                               const OptTensor& b_ih, const OptTensor& b_hh,
                                               const OptTensor& batch_sizes, bool reverse,
                                               bool need_workspace);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
    const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    const Tensor& workspace, const OptTensor& batch_sizes, bool reverse, bool has_bias,
    bool need_grad_input);
std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                       const Tensor& w_hh, const OptTensor& b_ih,
                                       const OptTensor& b_hh, const OptTensor& batch_sizes,
                                       bool reverse, bool relu);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const OptTensor& grad_output, const OptTensor& grad_hy, const Tensor& input,
    const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    const OptTensor& batch_sizes, bool reverse, bool relu, bool has_bias, bool need_grad_input);

}  // namespace simt_emu
}  // namespace rnnfast
