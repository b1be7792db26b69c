"""CUDA graphs of the networks: a batch's hundreds of kernel launches replayed by one call.

Why: the eager networks issue ~2,000 operators per 128-image batch from the batch loop's thread, and each
one gives up and retakes the GIL, which the 16 decode/encode threads also want. An H100 profile of an
end-to-end run (benchmarks/profile_e2e.py) showed that thread busy, never waiting for the device or for
decoded photos, while 13 of 16 cores sat idle. Replayed graphs: 826 against 763 img/s end to end there
(README, Speed). They run the same kernels on the same inputs: outputs equal eager ones bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

import torch

#: eager runs before a capture: cuDNN's algorithm search (cudnn.benchmark) and lazy inits happen there
WARMUP_RUNS = 2


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    inputs: tuple[torch.Tensor, ...]    # the graph reads these: each call copies its arguments into them
    outputs: tuple[torch.Tensor, ...]   # the graph writes these: each call returns copies


class GraphedCall:
    """``fn(*tensors) -> tensor or tuple of tensors`` on a GPU, replayed from a CUDA graph per input shape.

    A shape seen for the first time is captured then (a second or so); callers keep the number of shapes
    small by padding batches. ``key`` adds to the shape whatever else changes the captured work (bf16 on
    or off). Outputs are copies, so they stay valid after later calls. All calls share one memory pool:
    calls run one after another on the current stream, so one graph's temporaries never overlap another's.
    """

    def __init__(self, fn: Callable, device: torch.device, key: Callable[[], Hashable] = lambda: None):
        self.fn, self.device, self.key = fn, device, key
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[Hashable, _Captured] = {}

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (self.key(), tuple((tuple(x.shape), x.dtype) for x in inputs))
        captured = self.graphs.get(key)
        if captured is None:
            captured = self.graphs[key] = self._capture(inputs)
        for static, x in zip(captured.inputs, inputs):
            static.copy_(x, non_blocking=True)
        captured.graph.replay()
        return tuple(out.clone() for out in captured.outputs)

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Captured:
        static = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.fn(*static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the decode/encode threads never touch CUDA, but nothing they do should break a capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = self.fn(*static)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return _Captured(graph, static, outputs)


def graph_batch(count: int) -> int:
    """The batch size a graph is captured for: ``count`` rounded up to a power of two (at most 2x the work,
    a handful of graphs however batches close)."""
    return 1 << max(count - 1, 0).bit_length()
