"""How a training worker draws its batches from its Ray Data shard (`worker.batches`), on a stand-in
for the shard that hands out uint8 chunks as Ray Data's iterator does and records what it was asked."""

import itertools

import torch

from simgan_ray.training.worker import batches


class Shard:
    """Hands out images 0..n-1 (uint8 (1, 1, 1), holding their index) in chunks of the batch size
    asked for, pass after pass; keeps the keyword arguments of every pass."""

    def __init__(self, n: int) -> None:
        self.images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1)
        self.asked: list[dict] = []

    def iter_torch_batches(self, **kwargs):
        self.asked.append(kwargs)
        for chunk in self.images.split(kwargs["batch_size"]):
            yield {"image": chunk}


def drawn_ids(batch: torch.Tensor) -> list[int]:
    return torch.round((batch.flatten() + 1.0) * 127.5).long().tolist()  # back from [-1, 1]


def test_batches_slice_the_handouts_carry_the_rest_and_go_on_pass_after_pass():
    shard = Shard(100)
    got = list(itertools.islice(batches(shard, 8, 0, torch.device("cpu"), 0, fetch=3), 30))
    assert all(b.shape == (8, 1, 1, 1) and b.dtype == torch.float32 for b in got)
    # 24 images a handout, the last of a pass 4: carried into the next pass, in read order.
    assert sum((drawn_ids(b) for b in got), []) == (list(range(100)) * 3)[:240]
    assert len(shard.asked) == 3 and shard.asked[0]["batch_size"] == 24


def test_batches_through_the_window_draw_every_image_once_a_pass():
    first_pass = list(itertools.islice(batches(Shard(96), 8, 32, torch.device("cpu"), 5, fetch=4), 8))
    ids = sum((drawn_ids(b) for b in first_pass), [])
    assert len(ids) == len(set(ids)) == 64 and ids != sorted(ids)  # 96 read, 32 held by the window


def test_batches_ask_for_pinned_memory_on_a_gpu_only():
    for device, pinned in (("cpu", False), ("cuda", True), ("cuda:1", True)):
        shard = Shard(16)
        next(batches(shard, 4, 0, torch.device(device), 0))  # the stand-in's chunks stay on the CPU
        assert shard.asked[0]["pin_memory"] is pinned and shard.asked[0]["device"] == torch.device(device)
