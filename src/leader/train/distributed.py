"""One code path for one process and many: process group, per-rank batches, reductions.

Launch with ``torchrun`` (or SLURM ``srun`` + ``torchrun``; see ``docs/distributed.md``)::

    torchrun --nproc_per_node 8 -m leader.cli train ...          # one node, 8 GPUs
    leader train ...                                              # one process: same code

:func:`setup` reads the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and initialises the default process group when
``WORLD_SIZE > 1`` (NCCL on GPUs, gloo on CPUs). Without those variables it returns a
world of one and nothing else changes.

Batches (:class:`RankBatchSampler`). ``stageN.batch_size`` is the **global** batch ``G``: the
samples of one optimizer step over all ranks and all accumulation micro-steps. Every epoch
has one random permutation of the dataset, seeded by ``(seed, stage, epoch)`` and independent
of the world size; global step ``k`` takes samples ``order[k*G:(k+1)*G]``, split into
``grad_accum * world`` contiguous chunks of ``G / (grad_accum * world)`` samples (micro-step
``m`` of rank ``r`` takes chunk ``m * world + r``). The last, partial global batch is padded
with weight-0 samples so that every rank runs the same number of forward/backward passes (a
rank with no data would otherwise hang the others in the gradient all-reduce). The loss of
each rank is weighted by its share of real samples, so the averaged gradient is exactly the
gradient of the global-batch mean: 1 process with batch ``G`` and ``W`` processes with
``G / W`` each compute the same step (up to float summation order). The position saved in a
checkpoint is a count of *global* samples, so a run resumes at any world size.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "setup",
    "info",
    "is_main",
    "barrier",
    "all_reduce_sum",
    "broadcast_object",
    "cleanup",
    "RankBatchSampler",
    "split_batch",
    "epoch_order",
    "unused_parameters",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def info() -> DistInfo:
    """The current process's place (a world of one when no process group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend())
    return DistInfo(0, 1, _env_int("LOCAL_RANK", 0), None)


def setup(device: torch.device | str | None = "auto", backend: str = "auto",
          timeout_s: float = 1800.0) -> tuple[DistInfo, torch.device]:
    """Initialise the process group from the ``torchrun`` environment when needed.

    Args:
        device: ``"auto"`` / ``None`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a device.
            Under a multi-process launch on GPUs each process takes ``cuda:LOCAL_RANK``.
        backend: ``"auto"`` (NCCL for CUDA, gloo otherwise), or a backend name.
        timeout_s: collective timeout; a rank that waits longer raises instead of hanging.

    Returns:
        ``(DistInfo, device)``. Already-initialised process groups are reused untouched.

    Raises:
        RuntimeError: ``WORLD_SIZE > 1`` without ``MASTER_ADDR``/``MASTER_PORT`` (not a
            torchrun/SLURM launch), or CUDA requested on a machine without it.
    """
    if device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    world = _env_int("WORLD_SIZE", 1)
    already = dist.is_available() and dist.is_initialized()
    if already:
        world = dist.get_world_size()
    local_rank = _env_int("LOCAL_RANK", 0)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        if world > 1 and dev.index is None:
            dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        if dev.index is not None:
            torch.cuda.set_device(dev)
    if world > 1 and not already:
        for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if var not in os.environ:
                raise RuntimeError(
                    f"WORLD_SIZE={world} but {var} is not set: launch with torchrun "
                    "(see docs/distributed.md)")
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = dict(backend=backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        log.info("process group: rank %d/%d (%s) on %s", dist.get_rank(), world, backend, dev)
    return info(), dev


def is_main() -> bool:
    return info().rank == 0


def barrier() -> None:
    if info().distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (no-op for one process); returns ``t``."""
    if info().distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled; small objects only)."""
    if not info().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Sub-modules sharded as separate FSDP units: the backbone's blocks, then each head.

    Blocks are the outermost modules whose class name ends in ``Block`` (timm Swin, ViT,
    ConvNeXt, ...); a backbone without such modules is sharded by its top-level children.
    """
    backbone = getattr(model, "backbone", model)
    blocks: list[torch.nn.Module] = []
    inside: set[int] = set()
    for m in backbone.modules():
        if id(m) in inside or m is backbone:
            continue
        if type(m).__name__.endswith("Block"):
            blocks.append(m)
            inside.update(id(c) for c in m.modules())
    if not blocks:
        blocks = [c for c in backbone.children() if any(True for _ in c.parameters())]
    heads = list(getattr(model, "heads", {}).values()) if hasattr(model, "heads") else []
    return blocks + heads


def shard_fsdp(model: torch.nn.Module, device: torch.device, reshard_after_forward: bool = True) -> int:
    """Shard ``model`` in place with FSDP2 (``torch.distributed.fsdp.fully_shard``) over all ranks.

    Each unit of :func:`fsdp_units` becomes one FSDP group (its parameters are all-gathered
    just before its forward and freed after), then the root. Parameters become ``DTensor``
    shards, so the optimizer must be built afterwards. Returns the number of units.
    """
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = fsdp_units(model)
    for m in units:
        fully_shard(m, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return len(units) + 1


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; small objects only)."""
    if not info().distributed:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Destroy the default process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ batches
def epoch_order(n: int, seed: int, stage: int, epoch: int) -> list[int]:
    """The permutation of ``range(n)`` used by epoch ``epoch`` of ``stage`` (any world size)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(stage) * 10_007 + int(epoch))
    return torch.randperm(int(n), generator=gen).tolist()


def split_batch(global_batch: int, world_size: int, grad_accum: int = 1,
                micro_batch: int | None = None) -> tuple[int, int]:
    """``(grad_accum, per-rank micro-batch)`` for a global batch.

    Either ``grad_accum`` is given (micro-batch = ``G / (world * accum)``) or ``micro_batch``
    is (accum = ``G / (world * micro_batch)``).

    Raises:
        ValueError: the global batch does not divide evenly.
    """
    G, W = int(global_batch), int(world_size)
    if micro_batch:
        mb = int(micro_batch)
        if G % (W * mb):
            raise ValueError(f"global batch {G} is not a multiple of world size {W} x micro-batch {mb}")
        return G // (W * mb), mb
    A = max(1, int(grad_accum or 1))
    if G % (W * A):
        raise ValueError(
            f"global batch {G} is not divisible by world size {W} x grad_accum {A}; choose "
            f"stageN.batch_size as a multiple of {W * A} (it is the batch over all ranks and micro-steps)")
    return A, G // (W * A)


class RankBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches of one epoch, from global sample ``start`` (module docstring).

    Yields lists of ``micro_batch`` dataset indices; padding entries (weight 0, only in the
    last global batch) are encoded as ``-(index + 1)``.
    """

    def __init__(self, n: int, seed: int, stage: int, epoch: int, start: int, global_batch: int,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        self.n, self.start = int(n), int(start)
        self.G, self.rank, self.W, self.A = int(global_batch), int(rank), int(world_size), int(grad_accum)
        self.A, self.mb = split_batch(self.G, self.W, self.A)
        self.order = epoch_order(self.n, seed, stage, epoch)

    def __iter__(self) -> Iterator[list[int]]:
        per, W, r = self.mb, self.W, self.rank
        for s0 in range(self.start, self.n, self.G):
            g = self.order[s0:s0 + self.G]
            active = math.ceil(len(g) / (W * per))
            for m in range(active):
                c = m * W + r
                chunk = g[c * per:(c + 1) * per]
                fill = -((chunk[0] if chunk else g[0]) + 1)
                yield chunk + [fill] * (per - len(chunk))

    def __len__(self) -> int:
        left = max(0, self.n - self.start)
        full, rest = divmod(left, self.G)
        return full * self.A + math.ceil(rest / (self.W * self.mb))

    def steps(self) -> int:
        """Optimizer steps left in this epoch."""
        return math.ceil(max(0, self.n - self.start) / self.G)


# ------------------------------------------------------------------------------ BR-26 checks
def unused_parameters(module: torch.nn.Module) -> list[str]:
    """Names of trainable parameters of ``module`` that got no gradient in the last backward."""
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]

