"""The shuffle window: every image out once, drawn at random from the last `size` read, reproducibly."""

import torch

from simgan_ray.sets.window import ShuffleWindow


def stream(n: int, chunk: int) -> list[torch.Tensor]:
    """Images 0..n-1 as uint8 (1, 1, 2) tensors holding their index, in chunks."""
    ids = torch.arange(n)
    images = torch.stack([ids % 256, ids // 256], 1).to(torch.uint8).reshape(n, 1, 1, 2)
    return list(images.split(chunk))


def ids(images: torch.Tensor) -> list[int]:
    flat = images.reshape(len(images), 2).long()
    return (flat[:, 0] + 256 * flat[:, 1]).tolist()


def run(size: int, seed: int, n: int = 2000, chunk: int = 48) -> tuple[list[int], ShuffleWindow]:
    window = ShuffleWindow(size, seed)
    return [i for c in stream(n, chunk) for i in ids(window.push(c))], window


def test_every_image_goes_out_once_in_a_new_order_from_the_seed():
    out, window = run(256, seed=3)
    assert len(out) == 2000 - 256  # the window holds the rest
    assert sorted(out + ids(window.window)) == list(range(2000))
    assert out != sorted(out)
    assert run(256, seed=3)[0] == out
    assert run(256, seed=4)[0] != out


def test_each_image_out_is_drawn_from_the_whole_window():
    out, _ = run(256, seed=0)
    # Image i goes out at position p: read at i, it was one of the window's 256 + whatever came since.
    lag = [p + 256 - i for p, i in enumerate(out)]
    assert min(lag) >= 0  # nothing goes out before it was read
    assert max(lag) > 4 * 256  # some stay many chunks (geometric stays, mean 256 / 48 chunks)
    # The first chunks out mix the whole first fill, not its head: drawn uniformly, half below 128.
    first = out[:480]
    assert 0.35 < sum(i < 128 for i in first if i < 256) / sum(i < 256 for i in first) < 0.65


def test_a_chunk_larger_than_the_window_and_no_window():
    out, window = run(16, seed=1, n=300, chunk=100)
    assert sorted(out + ids(window.window)) == list(range(300))
    assert run(0, seed=1, n=300, chunk=100)[0] == list(range(300))
