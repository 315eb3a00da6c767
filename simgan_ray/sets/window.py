"""The shuffle window a training worker draws its images through (`data.local_shuffle_buffer`).

Ray Data hands a worker chunks of uint8 (k, C, H, W) images in shard order; the window holds the
last `size` images read. Each chunk that comes in takes the places of k images drawn at random
(without replacement) from the window, and those go out, in the order drawn: every image out is a
uniform draw from the window, as from a shuffle buffer, for one gather and one scatter of k rows
per chunk (no copy of the window, no per-row work in Python). An image stays a geometric number of
chunks (mean size / k), so the stream mixes over about `size` images; the window carries over from
one pass over the set to the next. Reproducible from `seed` for a given input order.
"""

from __future__ import annotations

import torch


class ShuffleWindow:
    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)
        self.window: torch.Tensor | None = None  # (size, C, H, W), on the chunks' device
        self.filled = 0

    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        """Take a chunk of images in, give out as many (fewer while the window fills, none after
        a chunk that only filled it); size 0 passes chunks through."""
        if self.size == 0:
            return chunk
        if self.window is None:
            self.window = chunk.new_empty((self.size, *chunk.shape[1:]))
        take = min(self.size - self.filled, len(chunk))
        self.window[self.filled:self.filled + take] = chunk[:take]
        self.filled += take
        out = [chunk[:0]]
        for start in range(take, len(chunk), self.size):  # a chunk larger than the window: in pieces
            piece = chunk[start:start + self.size]
            slots = torch.randperm(self.size, generator=self.generator)[:len(piece)].to(chunk.device)
            out.append(self.window[slots])
            self.window[slots] = piece
        return torch.cat(out)
