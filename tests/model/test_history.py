import torch

from simgan_ray.model.history import ImageHistory


def imgs(values):
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1)


def test_fills_then_replaces_randomly():
    h = ImageHistory(capacity=10, seed=0)
    h.push(imgs(range(6)))
    assert len(h) == 6
    h.push(imgs(range(6, 10)))
    assert len(h) == 10
    assert sorted(h.images.flatten().tolist()) == list(range(10))
    h.push(imgs([100, 101, 102]))
    assert len(h) == 10
    content = h.images.flatten().tolist()
    assert {100, 101, 102} <= set(content)  # new images went in...
    assert len(set(range(10)) & set(content)) == 7  # ...replacing 3 random old ones


def test_replacement_positions_are_random():
    hits = torch.zeros(20)
    for seed in range(200):
        h = ImageHistory(capacity=20, seed=seed)
        h.push(imgs(range(20)))
        h.push(imgs([-1]))
        hits[(h.images.flatten() == -1).nonzero()] += 1
    assert (hits > 0).all()  # every slot gets replaced sometimes
    assert hits.max() < 30  # ~10 each expected; no favourite slot


def test_sample_is_random_without_replacement():
    h = ImageHistory(capacity=50, seed=1)
    h.push(imgs(range(50)))
    a = h.sample(20).flatten().tolist()
    b = h.sample(20).flatten().tolist()
    assert len(set(a)) == 20 and a != b
    assert len(h.sample(100)) == 50
    assert len(ImageHistory(5, 0).sample(3)) == 0


def test_state_round_trip_continues_identically(tmp_path):
    h = ImageHistory(capacity=8, seed=3)
    h.push(imgs(range(12)))
    torch.save(h.state_dict(), tmp_path / "h.pt")
    restored = ImageHistory(capacity=8, seed=999)
    restored.load_state_dict(torch.load(tmp_path / "h.pt", weights_only=True))
    assert torch.equal(restored.images, h.images)
    h.push(imgs([50, 51]))
    restored.push(imgs([50, 51]))
    assert torch.equal(restored.images, h.images)
    assert torch.equal(restored.sample(4), h.sample(4))


def test_reshard_for_another_world_size():
    states = [ImageHistory(4, s) for s in range(2)]
    states[0].push(imgs([0, 1, 2, 3]))
    states[1].push(imgs([4, 5]))
    dicts = [s.state_dict() for s in states]
    parts = [ImageHistory.reshard(dicts, r, 3).flatten().tolist() for r in range(3)]
    assert sorted(sum(parts, [])) == [0, 1, 2, 3, 4, 5]
    assert [len(p) for p in parts] == [2, 2, 2]
