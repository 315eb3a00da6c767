"""Image history buffer (paper, Sec. 3.3), one shard per training rank.

Each rank keeps `capacity = history_size // world_size` refined images on the CPU. Every D step
pushes half of the current refined batch into it (appending while it fills, replacing random
slots once full) and takes half of D's refined half-batch from it, so D sees
25% current refined / 25% historical refined / 50% real images.
"""

from __future__ import annotations

import torch


class ImageHistory:
    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 0:
            raise ValueError(f"history capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.images: torch.Tensor | None = None  # (capacity, C, H, W) float32 on CPU, once seen
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def push(self, batch: torch.Tensor) -> None:
        """Add (n, C, H, W) images: fill free slots first, then overwrite random ones."""
        if self.capacity == 0 or len(batch) == 0:
            return
        batch = batch.detach().to("cpu", torch.float32)
        if self.images is None:
            self.images = torch.empty((self.capacity, *batch.shape[1:]), dtype=torch.float32)
        elif batch.shape[1:] != self.images.shape[1:]:
            raise ValueError(
                f"history holds images of shape {tuple(self.images.shape[1:])}, "
                f"got {tuple(batch.shape[1:])}"
            )
        batch = batch[: self.capacity]
        free = min(self.capacity - self.size, len(batch))
        self.images[self.size : self.size + free] = batch[:free]
        self.size += free
        rest = batch[free:]
        if len(rest):
            slots = torch.randperm(self.capacity, generator=self.generator)[: len(rest)]
            self.images[slots] = rest

    def sample(self, n: int) -> torch.Tensor:
        """n images drawn uniformly without replacement (fewer if the buffer holds fewer)."""
        if self.size == 0 or n <= 0:
            return torch.empty(0)
        idx = torch.randperm(self.size, generator=self.generator)[: min(n, self.size)]
        return self.images[idx].clone()

    def state_dict(self) -> dict:
        """Tensors and ints only, so it loads with torch.load(weights_only=True)."""
        images = self.images[: self.size].clone() if self.images is not None else torch.empty(0)
        return {
            "capacity": self.capacity,
            "images": images,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.images = None
        self.size = 0
        images = state["images"]
        if len(images):
            self.push(images)  # capacity may differ from the saved one (other world size)
        self.generator.set_state(state["generator"])

    @staticmethod
    def reshard(states: list[dict], rank: int, world_size: int) -> torch.Tensor:
        """Images for `rank` when the saved shards came from a different world size:
        all saved images, interleaved by rank (saved rank order), dealt round-robin."""
        images = [s["images"] for s in states if len(s["images"])]
        if not images:
            return torch.empty(0)
        return torch.cat(images)[rank::world_size]
