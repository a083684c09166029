"""GPU timing shared by the gpu_* benchmarks: eager (host launch overhead included) and CUDA-graph replay
(the GPU's own time per call, the host out of the way). Both are CUDA-event times averaged over a loop."""
from __future__ import annotations

import torch


def time_eager_us(fn, iters: int, warmup: int = 3) -> float:
    """Mean µs per call of `iters` back-to-back calls, between two CUDA events (no sync inside the loop)."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / iters


def time_graph_us(fn, iters: int, per_graph: int = 10) -> float:
    """GPU µs per call: `per_graph` calls captured in one CUDA graph, replayed iters // per_graph times."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            fn()
    graph.replay()
    reps = max(1, iters // per_graph)
    return time_eager_us(graph.replay, reps, warmup=1) / per_graph


def time_us(fn, iters: int) -> tuple[float, float]:
    """(graph µs, eager µs); graph is NaN where capture fails (e.g. an op that syncs with the host)."""
    eager = time_eager_us(fn, iters)
    try:
        graph = time_graph_us(fn, iters)
    except RuntimeError:
        graph = float("nan")
    return graph, eager
