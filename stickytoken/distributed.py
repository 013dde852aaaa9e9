"""One detection spread over several processes: torchrun, or a process group already set up.

``torchrun --nproc_per_node=N [--nnodes=M ...] -m stickytoken detect ...`` starts N processes
per machine with RANK, WORLD_SIZE and LOCAL_RANK set; ``setup`` joins them into a process
group (gloo on CPU, nccl on CUDA) and gives each its device, ``cuda:LOCAL_RANK``.  Inside an
already initialised group (``stickytoken.detect`` called from your own distributed script)
that group is used as it is.

How the work is shared (docs/algorithm.md §7): every rank builds the vocabulary, the mean
similarity and the pairs (cheap, deterministic, identical; rank 0 alone writes them); the
chunked stages (scoring, verification, audit) cut their tokens into the same chunks as one
process does, and chunk c is computed by rank c mod WORLD_SIZE, which writes it as a part into
the one run folder (a filesystem all machines share).  After a barrier every rank reads every
part, so the shortlist threshold and the fence are computed once every score is in, the same on
every rank (checked with all_gather).  Rank 0 alone writes run.json and the results and prints.
The parts are what one process would write, so the results are byte-identical to a
single-process run, and a killed run resumes from the parts like any other.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: its rank, the number of ranks, its local rank."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run's shared files and prints."""
        return self.rank == 0

    def owns(self, chunk: int) -> bool:
        """Whether this rank computes chunk ``chunk`` of a stage."""
        return chunk % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, what: str, value: Any) -> None:
        """Check that every rank holds the same ``value`` (after the barrier that precedes it)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise RuntimeError(f"ranks disagree on the {what}: {values}; is the run folder on a filesystem every "
                               "machine shares?")


SINGLE = Ranks()


def setup(device: str | None) -> tuple[Ranks, str | None]:
    """This process's Ranks and its device: a process group already initialised is used; one
    started by torchrun (WORLD_SIZE > 1 in the environment) is initialised here, gloo on CPU and
    nccl on CUDA; otherwise a single process.  With several ranks, a device left to the default
    (or 'cuda') becomes cuda:LOCAL_RANK."""
    world_env = int(os.environ.get("WORLD_SIZE", "1") or 1)
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return SINGLE, device
    if not dist.is_available():
        return SINGLE, device
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    use_cuda = torch.cuda.is_available() and (device is None or device == "auto" or device.startswith("cuda"))
    if not dist.is_initialized():
        if world_env <= 1:
            return SINGLE, device
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), local)
    if ranks.world == 1:
        return SINGLE, device
    if use_cuda and (device is None or device in ("auto", "cuda")):
        device = f"cuda:{local}"
    logger.debug("rank %d of %d on %s", ranks.rank, ranks.world, device or "the default device")
    return ranks, device
