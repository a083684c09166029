"""torch.distributed for the pipeline: start from torchrun's environment, shard windows, reduce in a fixed order.

Bit-identical results for every world size come from one rule: every sum over calibration windows is the
same binary tree over the windows, split at ``lo + (hi - lo) // 2``. When the world size W is a power of
two that divides the number of windows n, rank r's contiguous slice ``[r·n/W, (r+1)·n/W)`` is a node of that
tree, so each rank sums its own subtree and the ranks combine their results pairwise, as the tree's upper
levels, exactly as one process would. Maxima and integer counts are exact in any order; per-window numbers
(report terms) are gathered and summed in window order.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from .errors import PipelineError


def world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise PipelineError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


class Dist:
    """This process's place among the ranks (a single process is rank 0 of 1, with no process group)."""

    def __init__(self, device: torch.device):
        self.world = world_from_env()
        self.rank = int(os.environ.get("RANK", "0"))
        self.owned = False
        if self.world > 1:
            if device.type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                self.owned = True
        # Reductions travel on the compute device for NCCL, on the CPU for gloo.
        self.comm_device = device if (self.world > 1 and device.type == "cuda") else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_windows(self, n: int, what: str) -> None:
        w = self.world
        if w & (w - 1):
            raise PipelineError(f"world size {w}: use a power of two (1, 2, 4, 8, ...) so that every rank's windows "
                                "form one node of the fixed reduction tree and the result is bit-identical to one "
                                "process")
        if n % w:
            raise PipelineError(f"{what}: {n} windows do not divide evenly over {w} processes; use a multiple of {w} "
                                f"windows (e.g. {((n + w - 1) // w) * w}) or {w // 2 or 1} processes")

    def shard(self, n: int) -> range:
        """This rank's windows: the contiguous slice r·n/W .. (r+1)·n/W (uneven n: the first ranks get one more)."""
        base, extra = divmod(n, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return range(lo, lo + base + (1 if self.rank < extra else 0))

    def tree_sum(self, leaf: Callable[[int], Sequence[torch.Tensor]], n: int) -> list[torch.Tensor]:
        """Σ over windows 0..n-1 of ``leaf(i)`` (a list of tensors; called for this rank's windows only), summed
        along the fixed halving tree; every rank gets the result."""
        mine = self.shard(n)

        def node(lo: int, hi: int) -> list[torch.Tensor]:
            if hi - lo == 1:
                return [t.clone() for t in leaf(lo)]
            mid = lo + (hi - lo) // 2
            left, right = node(lo, mid), node(mid, hi)
            return [a.add_(b) for a, b in zip(left, right)]

        acc = node(mine.start, mine.stop)
        if self.world == 1:
            return acc
        acc = [a.to(self.comm_device) for a in acc]
        step = 1
        while step < self.world:  # the tree's upper levels: rank r takes r+step's subtree as its right half
            if self.rank % (2 * step) == 0:
                for a in acc:
                    other = torch.empty_like(a)
                    dist.recv(other, src=self.rank + step)
                    a.add_(other)
            elif self.rank % (2 * step) == step:
                for a in acc:
                    dist.send(a, dst=self.rank - step)
                break
            step *= 2
        for a in acc:
            dist.broadcast(a, src=0)
        return acc

    def max(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def sum_int(self, x: int) -> int:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.int64, device=self.comm_device)
        dist.all_reduce(t)
        return int(t)

    def gather(self, items: list) -> list:
        """Every rank's list, concatenated in rank order (= window order for per-window items)."""
        if self.world == 1:
            return list(items)
        out: list = [None] * self.world
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def share(self, obj, src: int):
        """``obj`` from rank ``src`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.comm_device if self.comm_device.type == "cuda" else None)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["Dist", "world_from_env"]
