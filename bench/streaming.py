"""Time per step of stateful batch-1 inference (not a test: run it by hand).

    python -m bench.streaming [--steps 1000] [--repeats 5]

A 2-layer LSTM (input and hidden size 256, float32, CPU) fed one step [1, 256] at a time:
rnnfast.StreamingState around rnnfast.LSTM (through the operators, and calling the layer)
and around torch.nn.LSTM, rnnfast.LSTM and torch.nn.LSTM each called per step with its
state, all under torch.no_grad. Prints the
median microseconds per step over the repeats (interleaved) and the ratio to torch.nn.
"""
import argparse
import statistics
import time

import torch

import rnnfast


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    H = args.hidden
    ref = torch.nn.LSTM(H, H, num_layers=2).eval()
    fast = rnnfast.LSTM(H, H, num_layers=2).eval()
    fast.load_state_dict(ref.state_dict())
    xs = torch.randn(args.steps, 1, H)

    def torch_steps(m):
        def run():
            hx = None
            with torch.no_grad():
                for t in range(args.steps):
                    _, hx = m(xs[t:t + 1], hx)
        return run

    def streaming(m, direct=True):
        s = rnnfast.StreamingState(m)
        s.direct = direct

        def run():
            s.reset()
            for t in range(args.steps):
                s.step(xs[t])
        return run

    cases = {
        "torch.nn.LSTM per step": torch_steps(ref),
        "rnnfast.LSTM per step": torch_steps(fast),
        "StreamingState(torch.nn.LSTM)": streaming(ref),
        "StreamingState(rnnfast.LSTM)": streaming(fast),
        "  same, calling the layer": streaming(fast, direct=False),
    }
    # same outputs
    s = rnnfast.StreamingState(fast)
    ys = torch.stack([s.step(xs[t]) for t in range(50)])
    with torch.no_grad():
        full, _ = ref(xs[:50])
    torch.testing.assert_close(ys, full, atol=1e-5, rtol=1e-4)

    times = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / args.steps * 1e6)
    base = statistics.median(times["torch.nn.LSTM per step"])
    print(f"2-layer LSTM, I = H = {H}, B = 1, float32, {args.steps} single steps, "
          f"median of {args.repeats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:32s} {med:8.1f} us/step  ({med / base:.2f}x torch.nn)")


if __name__ == "__main__":
    main()
