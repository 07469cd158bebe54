"""Seeded, resumable sampling of clean reference batches for gradient alignment.

The sampler walks through seeded permutations of the reference set ("passes"): pass ``p`` uses
``torch.randperm(n, generator=Generator().manual_seed(seed + p))``. Its whole state is two integers
(the pass and the position in it), saved as JSON next to a checkpoint, so a resumed run draws exactly the
batches the uninterrupted run would have drawn. Under data parallelism every process draws the same global
batch of ``batch_size * world_size`` indices and keeps its own contiguous slice.

Example:
    >>> sampler = ReferenceSampler(num_examples=10, batch_size=4, seed=0)
    >>> first = sampler.next_indices()
    >>> state = sampler.state_dict()
    >>> second = sampler.next_indices()
    >>> other = ReferenceSampler(num_examples=10, batch_size=4, seed=0)
    >>> other.load_state_dict(state)
    >>> other.next_indices() == second
    True
"""

from __future__ import annotations

import json
import os

import torch

from ..atomic import write_json_atomic

STATE_FILE = "reference_sampler.json"


class ReferenceSampler:
    """Draws reference-set indices batch after batch, reproducibly.

    Args:
        num_examples: size of the reference set (> 0).
        batch_size: examples per process per draw (> 0).
        seed: seed of the permutations.
        world_size: number of data-parallel processes.
        rank: this process's index in ``[0, world_size)``.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, world_size: int = 1, rank: int = 0):
        if num_examples <= 0:
            raise ValueError("num_examples must be positive: the reference set is empty.")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size}).")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.pass_index = 0
        self.position = 0
        self._perm: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None:
            generator = torch.Generator().manual_seed(self.seed + self.pass_index)
            self._perm = torch.randperm(self.num_examples, generator=generator).tolist()
        return self._perm

    def _next_global(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            perm = self._permutation()
            take = min(count - len(out), self.num_examples - self.position)
            out.extend(perm[self.position : self.position + take])
            self.position += take
            if self.position >= self.num_examples:
                self.pass_index += 1
                self.position = 0
                self._perm = None
        return out

    def next_indices(self) -> list[int]:
        """Indices of this process's share of the next global reference batch."""
        global_batch = self._next_global(self.batch_size * self.world_size)
        start = self.rank * self.batch_size
        return global_batch[start : start + self.batch_size]

    def state_dict(self) -> dict:
        """JSON-serialisable state (plain ints)."""
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world_size": self.world_size,
            "pass_index": self.pass_index,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`; the reference set size and seed must match."""
        for key in ("num_examples", "seed"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"Reference sampler state has {key}={state[key]} but this run has {getattr(self, key)}: "
                    "resume with the same reference_dataset, reference_size and seed."
                )
        if int(state["batch_size"]) * int(state["world_size"]) != self.batch_size * self.world_size:
            raise ValueError(
                "The global reference batch (reference_batch_size x processes) differs from the checkpoint's: "
                "resume with the same reference_batch_size and number of processes."
            )
        self.pass_index = int(state["pass_index"])
        self.position = int(state["position"])
        self._perm = None

    def save(self, folder: str) -> str:
        """Write the state atomically to ``folder/reference_sampler.json``; returns the path."""
        path = os.path.join(folder, STATE_FILE)
        write_json_atomic(path, self.state_dict(), indent=None)
        return path

    def load(self, folder: str) -> bool:
        """Restore from ``folder/reference_sampler.json``; returns False when the file is absent."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            return False
        with open(path) as handle:
            self.load_state_dict(json.load(handle))
        return True
