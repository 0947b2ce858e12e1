// The rnnfast operators: what each takes and returns.
//
// One call runs one layer in one direction over the whole sequence (the cells are
// the same operators with T = 1). Schemas are registered in ops.cpp:
//
//   lstm_forward(input, hx, cx, w_ih, w_hh, b_ih?, b_hh?, w_hr?, batch_sizes?,
//                bool reverse, bool need_workspace) -> (output, hy, cy, gates, cells)
//   lstm_backward(grad_output?, grad_hy?, grad_cy?, input, hx, cx, w_ih, w_hh, w_hr?,
//                 output, gates, cells, batch_sizes?, bool reverse, bool has_bias,
//                 bool need_grad_input)
//       -> (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr)
//   gru_forward(input, hx, w_ih, w_hh, b_ih?, b_hh?, batch_sizes?, bool reverse,
//               bool need_workspace) -> (output, hy, workspace)
//   gru_backward(grad_output?, grad_hy?, input, hx, w_ih, w_hh, output, workspace,
//                batch_sizes?, bool reverse, bool has_bias, bool need_grad_input)
//       -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)
//   rnn_forward(input, hx, w_ih, w_hh, b_ih?, b_hh?, batch_sizes?, bool reverse,
//               bool relu) -> (output, hy)
//   rnn_backward(grad_output?, grad_hy?, input, hx, w_ih, w_hh, output, batch_sizes?,
//                bool reverse, bool relu, bool has_bias, bool need_grad_input)
//       -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias)
//
// Legend: T steps, B batch, N = T*B rows (or sum(batch_sizes) when packed),
// I input size, H hidden size, P = proj_size if w_hr is given else H, G gates
// (LSTM 4, GRU 3, RNN 1).
//   input  (T, B, I) time-major, or (N, I) packed data with batch_sizes (T,) int64 CPU
//   hx     (B, P)       cx (B, H)   (LSTM)
//   w_ih   (G*H, I)     w_hh (G*H, P)     b_ih, b_hh (G*H)     w_hr (P, H) (LSTM)
//   output (T, B, P) or (N, P);  hy (B, P);  cy (B, H)
//   LSTM gates (N, 4H) activated gates and cells (N, H) cell states; GRU workspace
//   (N, 4H): r, z, n and W_hn h + b_hn. What backward needs; empty (0,) when
//   need_workspace is false (inference). The RNN needs only its output.
//   Gradients of absent things (bias, projection, an input that needs none) are
//   empty (0,). LSTM/RNN: grad_bias is the gradient of b_ih and of b_hh (equal).
#pragma once

// The operators are implemented once for every backend in csrc/core/operators.h
// (core::Operators<Backend>) and registered per device: CPU in ops.cpp, CUDA in
// cuda/rnn_cuda.cu, the test-only SIMT emulator in simt/emulated_ops.cpp.
