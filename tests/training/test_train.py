import copy
import json
import signal
import time
from pathlib import Path

import pytest
import torch
from ray.util.state import list_actors

from simgan_ray.common.errors import SimganError
from simgan_ray.measures.classifier import TaskNet
from simgan_ray.model.export import load_export
from simgan_ray.model.history import ImageHistory
from simgan_ray.model.losses import LabelConsistency, LocalAdversarialLoss, R1Penalty, SelfRegularization
from simgan_ray.model.networks import DiscriminatorConfig, LocalDiscriminator, Refiner, RefinerConfig
from simgan_ray.training.config import GuardConfig, ScheduleConfig, load_config
from simgan_ray.training.gan import (
    Gan,
    discriminator_update,
    ema_beta,
    ema_update,
    images_per_rank,
    lr_scale,
    make_gan,
    phase_at,
    phase_table,
    pretrain_refiner,
    refiner_update,
    run_step,
    set_lrs,
    train_discriminator,
    train_refiner,
)
from simgan_ray.training.guard import CollapseGuard
from simgan_ray.training.tracking import read_events
from simgan_ray.training.train import fit, ingest_options
from simgan_ray.training.worker import FETCH, images_to_read
from tests.conftest import TINY, small_run


def test_phase_table_order_and_alternation():
    table = phase_table(ScheduleConfig(pretrain_refiner_steps=2, pretrain_discriminator_steps=1, steps=3, k_g=2, k_d=1))
    names = [phase_at(s, table).name for s in range(6)]
    assert names == ["pretrain_refiner"] * 2 + ["pretrain_discriminator"] + ["adversarial"] * 3
    adversarial = phase_at(5, table)
    assert [(u.network, u.run, u.reads, u.repeats) for u in adversarial.updates] == [
        ("refiner", train_refiner, ("synthetic",), 2), ("discriminator", train_discriminator, ("synthetic", "real"), 1)]
    assert adversarial.adversarial and not any(p.adversarial for p in table[:2])
    (pretrain,) = table[0].updates
    assert pretrain.run is pretrain_refiner  # self-regularization only: no adversary before the adversarial phase
    with pytest.raises(IndexError):
        phase_at(6, table)


def test_a_run_draws_what_its_datasets_are_sized_for():
    cfg = load_config(None, {**TINY, "batch_size": 4, "history_size": 8, "schedule.pretrain_refiner_steps": 2,
                             "schedule.pretrain_discriminator_steps": 1, "schedule.steps": 3, "schedule.k_g": 2,
                             "data.local_shuffle_buffer": 10, "run.num_workers": 3})
    drawn = {"synthetic": 0, "real": 0}

    def stream(name):
        while True:
            drawn[name] += 4
            yield torch.zeros(4, 1, 28, 28)

    gan, table = make_gan(cfg, ImageHistory(cfg.history_size, 0)), phase_table(cfg.schedule)
    synthetic, real = stream("synthetic"), stream("real")
    for step in range(cfg.schedule.total_steps):
        run_step(gan, cfg, table, step, synthetic, real, 1.0, 0, lambda metrics, images: None)
    assert drawn == images_per_rank(table, 4) == {"synthetic": (2 + 1 + 3 * 3) * 4, "real": (1 + 3) * 4}
    # All three workers' draws, their windows and a last handout each.
    assert images_to_read(cfg) == {k: 3 * (n + 10 + FETCH * 4) for k, n in drawn.items()}


def test_warmup_then_decay_scale_both_learning_rates():
    s = ScheduleConfig(pretrain_refiner_steps=2, pretrain_discriminator_steps=1, steps=6, warmup_steps=4)
    assert [lr_scale(step, s) for step in range(9)] == [1, 1, 1, 0.25, 0.5, 0.75, 1, 1, 1]
    assert lr_scale(5, ScheduleConfig(pretrain_refiner_steps=2, pretrain_discriminator_steps=1, steps=6)) == 1
    # Then a fall from 1 to lr_final over the rest (global steps 5-9), linear or cosine.
    linear = ScheduleConfig(pretrain_refiner_steps=2, pretrain_discriminator_steps=1, steps=7, warmup_steps=2,
                            lr_decay="linear", lr_final=0.2)
    assert [lr_scale(step, linear) for step in range(10)] == pytest.approx([1, 1, 1, 0.5, 1, 1, 0.8, 0.6, 0.4, 0.2])
    cosine = linear.model_copy(update={"lr_decay": "cosine"})
    assert [lr_scale(step, cosine) for step in range(5, 10)] == pytest.approx([1, 0.8828, 0.6, 0.3172, 0.2], abs=1e-4)
    gan = tiny_gan()
    cfg = load_config(None, {"optimizer_r.lr": 4e-4, "optimizer_d.lr": 2e-4})
    set_lrs(gan, cfg, 0.25)
    assert (gan.opt_r.param_groups[0]["lr"], gan.opt_d.param_groups[0]["lr"]) == (1e-4, 5e-5)


def test_refiner_weight_average_follows_r_then_averages_with_its_half_life():
    s = ScheduleConfig(pretrain_refiner_steps=2, pretrain_discriminator_steps=1, steps=100, ema_half_life=8)
    # A copy of R through pretraining; the half-life ramps in as t/2 (t adversarial steps done), up to 8.
    assert [ema_beta(step, s) for step in range(3)] == [0, 0, 0]
    assert [ema_beta(step, s) for step in (3, 4, 20, 99)] == pytest.approx([0.5**2, 0.5, 0.5**(1 / 8), 0.5**(1 / 8)])
    assert ema_beta(50, ScheduleConfig(steps=100)) == 0  # ema_half_life 0: no average kept
    gan = tiny_gan(ema=True)
    refiner_update(gan, torch.rand(8, 1, 28, 28) * 2 - 1, with_adversary=False)
    ema_update(gan, 0.0)
    assert all(torch.equal(a, p) for a, p in zip(gan.ema.parameters(), gan.refiner.parameters(), strict=True))
    start = [p.clone() for p in gan.ema.parameters()]
    with torch.no_grad():  # R jumps by +1; after one half-life the average has moved half the way
        for p in gan.refiner.parameters():
            p.add_(1.0)
    for _ in range(8):
        ema_update(gan, 0.5**(1 / 8))
    assert all(torch.allclose(a, p0 + 0.5) for a, p0 in zip(gan.ema.parameters(), start, strict=True))
    plain = tiny_gan()
    assert gan.exported is gan.ema and plain.exported is plain.refiner
    assert not any(p.requires_grad for p in gan.ema.parameters())


def test_collapse_guard_rolls_everything_back_and_cools_the_learning_rates():
    gan = tiny_gan(history=16, ema=True)
    guard = CollapseGuard(GuardConfig(min_label_acc=0.3, lr_factor=0.5, max_rollbacks=1))
    adversarial = phase_table(ScheduleConfig(steps=1))[2]
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    discriminator_update(gan, x, x)
    guard.snapshot(gan, step=40, reports=4)
    weights = [p.clone() for p in [*gan.refiner.parameters(), *gan.discriminator.parameters(), *gan.ema.parameters()]]
    history = gan.history.images[: len(gan.history)].clone()
    adam_steps = gan.opt_d.state[next(gan.discriminator.parameters())]["step"].item()
    for _ in range(3):  # the updates that "collapsed"
        refiner_update(gan, x, with_adversary=True)
        discriminator_update(gan, x, x)
        ema_update(gan, 0.5)
    healthy, pretrain = {"probe_label_acc": 0.64}, phase_table(ScheduleConfig())[0]
    assert not guard.collapsed(healthy, adversarial, torch.device("cpu"))
    assert not guard.collapsed({"probe_label_acc": 0.1}, pretrain, torch.device("cpu"))  # only adversarial
    assert guard.collapsed({"probe_label_acc": 0.1}, adversarial, torch.device("cpu"))
    # With a weight average kept, R's own accuracy is watched: the average lags a collapse.
    assert guard.collapsed({"probe_label_acc": 0.64, "probe_r_label_acc": 0.1}, adversarial, torch.device("cpu"))
    assert guard.rollback(gan, 60, {"probe_label_acc": 0.1}) == (40, 4)
    now = [*gan.refiner.parameters(), *gan.discriminator.parameters(), *gan.ema.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights, now, strict=True))
    assert torch.equal(gan.history.images[: len(gan.history)], history) and len(gan.history) == 4
    assert gan.opt_d.state[next(gan.discriminator.parameters())]["step"].item() == adam_steps
    assert guard.rollbacks == 1 and guard.lr_factor == 0.5
    with pytest.raises(SimganError, match=r"step 90: the refiner collapsed \(probe_label_acc 0.050 .* 1 rollback"):
        guard.rollback(gan, 90, {"probe_label_acc": 0.05})
    assert not CollapseGuard(GuardConfig()).collapsed({"probe_label_acc": 0.0}, adversarial, torch.device("cpu"))


def test_guard_needs_the_probe():
    with pytest.raises(SimganError, match="guard.min_label_acc needs probe.uri"):
        load_config(None, {"guard.min_label_acc": 0.3})
    with pytest.raises(SimganError, match="probe.export: best needs probe.uri"):
        load_config(None, {"probe.export": "best"})


def tiny_gan(history: int = 64, ema: bool = False) -> Gan:
    torch.manual_seed(0)
    r = Refiner(RefinerConfig(features=4, blocks=1))
    d = LocalDiscriminator(DiscriminatorConfig(widths=(4, 4, 4, 4)))
    average = copy.deepcopy(r).requires_grad_(False) if ema else None
    return Gan(r, d, torch.optim.Adam(r.parameters()), torch.optim.Adam(d.parameters()),
               LocalAdversarialLoss(), SelfRegularization(0.1), ImageHistory(history, 0), ema=average)


def test_refiner_update_trains_only_the_refiner():
    gan = tiny_gan()
    d_before = [p.clone() for p in gan.discriminator.parameters()]
    r_before = [p.clone() for p in gan.refiner.parameters()]
    out = refiner_update(gan, torch.rand(8, 1, 28, 28) * 2 - 1, with_adversary=True)
    assert set(out) == {"loss_r_reg", "loss_r_adv", "mean_abs_change"}
    assert all(torch.equal(a, b) for a, b in zip(d_before, gan.discriminator.parameters(), strict=True))
    assert all(p.grad is None for p in gan.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(r_before, gan.refiner.parameters(), strict=True))
    pre = refiner_update(gan, torch.rand(8, 1, 28, 28) * 2 - 1, with_adversary=False)
    assert "loss_r_adv" not in pre


def test_label_consistency_joins_only_the_adversarial_refiner_update():
    gan = tiny_gan()
    gan.consistency = LabelConsistency(TaskNet(1, 10), weight=1.0)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    out = refiner_update(gan, x, with_adversary=True)
    assert {"loss_r_label", "label_kept"} <= set(out) and out["loss_r_label"] > 0
    assert all(p.grad is None for p in gan.consistency.net.parameters())
    assert "loss_r_label" not in refiner_update(gan, x, with_adversary=False)  # pretraining: self-reg only


def test_bf16_updates_keep_float32_state_and_match_float32_losses():
    x, y = torch.rand(8, 1, 28, 28) * 2 - 1, torch.rand(8, 1, 28, 28) * 2 - 1
    fp32, bf16 = tiny_gan(), tiny_gan()
    bf16.amp = torch.bfloat16
    low, full = ({**refiner_update(g, x, with_adversary=True), **discriminator_update(g, x, y)} for g in (bf16, fp32))
    for key in ("loss_r_reg", "loss_r_adv", "loss_d"):
        assert torch.isfinite(low[key])
        assert low[key].item() == pytest.approx(full[key].item(), rel=0.03), key
    params = [*bf16.refiner.parameters(), *bf16.discriminator.parameters()]
    assert all(p.dtype == torch.float32 for p in params)
    assert all(s["exp_avg"].dtype == torch.float32 for s in bf16.opt_r.state.values())
    assert bf16.history.images.dtype == torch.float32


def test_discriminator_update_uses_history_half():
    gan = tiny_gan(history=64)
    r_before = [p.clone() for p in gan.refiner.parameters()]
    out = discriminator_update(gan, torch.rand(8, 1, 28, 28) * 2 - 1, torch.rand(8, 1, 28, 28) * 2 - 1)
    assert set(out) == {"loss_d", "d_acc_real", "d_acc_refined"}
    assert len(gan.history) == 4  # half of the refined batch goes into the buffer
    seen = []
    original = gan.history.sample
    gan.history.sample = lambda n: seen.append(n) or original(n)
    discriminator_update(gan, torch.rand(8, 1, 28, 28) * 2 - 1, torch.rand(8, 1, 28, 28) * 2 - 1)
    assert seen == [4]  # D's refined half: 4 current + 4 from history
    assert len(gan.history) == 8
    assert all(torch.equal(a, b) for a, b in zip(r_before, gan.refiner.parameters(), strict=True))


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_r1_penalty_joins_the_discriminator_update_only(amp):
    """With R1 the same D step reports the same adversarial loss plus a positive penalty, and moves D
    otherwise than without it; R's updates are untouched (in bf16 too: the double backward)."""
    x, y = torch.rand(8, 1, 28, 28) * 2 - 1, torch.rand(8, 1, 28, 28) * 2 - 1
    plain, penalised = tiny_gan(), tiny_gan()
    penalised.r1 = R1Penalty(10.0)
    for gan in (plain, penalised):
        gan.amp = amp
    a, b = discriminator_update(plain, x, y), discriminator_update(penalised, x, y)
    assert "loss_d_r1" not in a and torch.isfinite(b["loss_d_r1"]) and b["loss_d_r1"] > 0
    assert a["loss_d"].item() == pytest.approx(b["loss_d"].item(), rel=1e-6)
    assert not all(torch.equal(p, q) for p, q in zip(plain.discriminator.parameters(),
                                                     penalised.discriminator.parameters(), strict=True))
    assert "loss_d_r1" not in refiner_update(penalised, x, with_adversary=True)


def _latest_checkpoint(run: Path) -> Path:
    """Ray Train names checkpoint dirs by timestamp: the last in name order is the newest."""
    return max(p for p in run.glob("checkpoint_*") if p.is_dir())


def _live_record_reader(run: Path, out: Path):
    """A Train callback (it runs in the Train controller, another process) that, at every report,
    reads the run's live record as a user would mid-run and appends what it found to `out`."""
    from ray.train import UserCallback

    class Reader(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            from simgan_ray.training.tracking import read_events

            events = read_events(str(run))
            seen = {"step": metrics[0]["step"], "loss_r_reg": events["loss_r_reg"],
                    "images": sorted(events.get("samples", {})),
                    "jsonl": [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()],
                    "samples": sorted(p.name for p in (run / "samples").iterdir())}
            with out.open("a") as f:
                f.write(json.dumps(seen) + "\n")

    return Reader()


def test_ingest_options_keep_the_read_ahead_bound_of_each_dataset(ray_session, digit_sets):
    """Ray Train replaces a dataset's execution options with its ingest options: they carry the
    dataset's own limits, or its reading would run ahead of the workers by half the object store."""
    from simgan_ray.sets import data, shards

    ds = data.image_dataset(digit_sets["synthetic"], shards.read_manifest(digit_sets["synthetic"]))
    options = ingest_options(load_config(None, {**TINY, "data.preserve_order": True}), ds)
    bound = ds.context.execution_options.resource_limits.object_store_memory
    assert options.preserve_order and options.resource_limits.object_store_memory == bound < float("inf")


# The actors of one training run besides its workers (Ray Train's and Ray Data's, and the skip ledger).
RUN_ACTORS = {"TrainController", "DatasetManager", "SplitCoordinator", "SkipLedger"}


def test_two_worker_run_reruns_bit_for_bit_checkpoints_and_resumes(ray_session, digit_sets, tmp_path):
    """A real 2-worker DDP TorchTrainer run (gloo) of 20 steps, rerun under another name, then
    resumed to 30. What README claims of `data.preserve_order`: a rerun on the same machine with the
    same worker count (local shuffle and augmentation on) reports the same numbers at every report,
    bit for bit, and exports the same weights; timings are left out."""
    overrides = {
        **TINY,
        "data.synthetic": digit_sets["synthetic"], "data.real": digit_sets["real"],
        "data.preserve_order": True, "data.local_shuffle_buffer": 16,
        "run.storage": str(tmp_path), "run.name": "r", "run.num_workers": 2, "run.cpus_per_worker": 1,
        "run.report_every": 5, "run.checkpoint_every": 10,
        "batch_size": 8, "history_size": 40,
        "schedule.pretrain_refiner_steps": 6, "schedule.pretrain_discriminator_steps": 4, "schedule.steps": 10,
        "schedule.ema_half_life": 4,
        "augment.translation": 0.125, "augment.cutout": 0.25,  # its draws too are the same in a rerun
    }
    cfg = load_config(None, overrides)
    seen = tmp_path / "seen.jsonl"
    interrupt = signal.getsignal(signal.SIGINT)
    first = fit(cfg, callbacks=[_live_record_reader(tmp_path / "r", seen)])
    # Ray Train's handler (it aborts the run) is gone with the run: Ctrl-C interrupts again, and
    # nothing holds the run's controller, which exits with its data coordinators.
    assert signal.getsignal(signal.SIGINT) is interrupt
    state_api = f"http://{ray_session._private.worker.get_dashboard_url()}"  # this session's Ray, of the machine's
    deadline = time.monotonic() + 30
    while left := RUN_ACTORS & {a.class_name for a in list_actors(state_api, filters=[("state", "=", "ALIVE")],
                                                                  raise_on_missing_output=False)}:
        assert time.monotonic() < deadline, f"still alive after the run: {left}"
        time.sleep(0.2)
    run = tmp_path / "r"
    # At each report, read while the run went on (the reader may lag the workers by a report or two):
    # metrics.jsonl held it, TensorBoard its numbers, and each checkpoint's sample grid was there.
    observed = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [o["step"] for o in observed] == [5, 10, 15, 20]
    for o, m in zip(observed, first.metrics, strict=True):
        assert m in o["jsonl"]
        assert o["loss_r_reg"][str(m["step"])] == pytest.approx(m["loss_r_reg"], rel=1e-6)
        assert {f"step-{s:06d}.png" for s in (10, 20) if s <= m["step"]} <= set(o["samples"])
    assert observed[-1]["images"] == [10, 20]  # the grid at checkpoints, in TensorBoard too
    assert first.step == 20
    assert [m["step"] for m in first.metrics] == [5, 10, 15, 20]
    rerun = fit(load_config(None, {**overrides, "run.name": "r2"}))
    timing = {"images_per_s", "input_wait_frac", "worker_peak_rss_mb"}
    assert [{k: v for k, v in m.items() if k not in timing} for m in rerun.metrics] == \
        [{k: v for k, v in m.items() if k not in timing} for m in first.metrics]
    a, b = (torch.load(tmp_path / name / "export" / "refiner.pt", weights_only=True) for name in ("r", "r2"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["phase"] for m in first.metrics] == ["pretrain_refiner", "pretrain_discriminator"] + ["adversarial"] * 2
    last = first.metrics[-1]
    for key in ("loss_r_adv", "loss_r_reg", "loss_d", "d_acc_real", "d_acc_refined", "mean_abs_change", "images_per_s",
                "input_wait_frac"):
        assert key in last
    assert last["mean_abs_change"] > 0
    assert 0 <= last["input_wait_frac"] < 1
    for artefact in ("config.yaml", "samples.png", "curves.png", "metrics.jsonl", "export/refiner.pt"):
        assert (run / artefact).exists(), artefact
    refiner, meta = load_export(run / "export")
    assert meta["step"] == 20 and meta["refiner"]["features"] == 8
    workers = json.loads((run / "workers.json").read_text())
    # One torch thread per worker (run.cpus_per_worker): 2 workers on 2 cores do not oversubscribe.
    assert [(w["rank"], w["torch_threads"], w["device"]) for w in workers] == [(0, 1, "cpu"), (1, 1, "cpu")]

    ckpt = _latest_checkpoint(run)
    shards_ = sorted(p.name for p in ckpt.glob("history-rank*.pt"))
    assert shards_ == ["history-rank00000.pt", "history-rank00001.pt"]  # one per rank, merged by Ray
    hist = [torch.load(ckpt / s, weights_only=True)["history"] for s in shards_]
    assert all(h["capacity"] == 20 for h in hist)  # history_size / world_size
    # D ran 4 pretrain + 5 adversarial updates, pushing 4 images each: the 20-slot shards are full.
    assert all(len(h["images"]) == 20 for h in hist)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    # Adam's step count: 6 pretrain + 10 x k_g=2 adversarial refiner updates.
    assert state["optimizer_r"]["state"][0]["step"].item() == 6 + 2 * 10
    assert state["optimizer_d"]["state"][0]["step"].item() == 4 + 10
    # The export is R's weight average, kept in the resume state beside R and apart from it.
    exported = torch.load(ckpt / "export" / "refiner.pt", weights_only=True)
    assert all(torch.equal(exported[k], v) for k, v in state["refiner_ema"].items())
    assert not all(torch.equal(state["refiner"][k], v) for k, v in state["refiner_ema"].items())
    assert meta["ema_half_life"] == 4

    with pytest.raises(SimganError, match="already holds a simgan-ray training run"):
        fit(cfg)
    # A local Ray is one machine: Train's preemption watcher (a process per run) is left out.
    mine = ("job_id", "=", ray_session.get_runtime_context().get_job_id())  # joined commands' jobs run theirs
    assert list_actors(state_api, filters=[("class_name", "=", "PreemptionWatcher"), mine],
                       raise_on_missing_output=False) == []
    # Resumed with a new refiner learning rate: the config wins over the checkpoint's optimizer state.
    longer = load_config(None, {**overrides, "schedule.steps": 20, "optimizer_r.lr": 2e-4})
    second = fit(longer, resume=True)
    assert second.step == 30
    steps = [m["step"] for m in second.metrics]
    assert steps == [5, 10, 15, 20, 25, 30]  # the log continues: nothing lost, nothing repeated
    state = torch.load(_latest_checkpoint(run) / "state.pt", weights_only=True)
    assert state["step"] == 30
    assert state["optimizer_r"]["state"][0]["step"].item() == 6 + 2 * 20  # continued, not reset
    assert state["optimizer_r"]["param_groups"][0]["lr"] == 2e-4
    assert state["optimizer_d"]["state"][0]["step"].item() == 4 + 20


def test_guard_rolls_back_a_two_worker_run_then_stops_it(ray_session, digit_sets, labelled_real_sets, tmp_path):
    """A guard that every adversarial report trips (min_label_acc 1.0): the first trip rolls both
    ranks back to the last pretraining report, the second stops the run naming the cause; the
    checkpoints hold no collapsed step."""
    from simgan_ray.measures.probe import ProbeSpec, build_probe

    probe = str(tmp_path / "probe")
    build_probe(ProbeSpec(real_train=labelled_real_sets["dev"], reference=digit_sets["real"], out=probe,
                          train_images=200, epochs=1, reference_images=100))
    cfg = load_config(None, small_run(digit_sets, tmp_path, "g", **{
        "run.num_workers": 2, "run.report_every": 2, "run.checkpoint_every": 2, "schedule.steps": 6,
        "probe.uri": probe, "probe.images": 32, "guard.min_label_acc": 1.0, "guard.max_rollbacks": 1,
        "run.precision": "bf16", "loss.r1_gamma": 1.0,  # the bf16 and R1 paths under DDP, at no extra cost
    }))
    from ray.train import TrainingFailedError

    with pytest.raises(TrainingFailedError, match=r"step 6: the refiner collapsed .* after 1 rollback"):
        fit(cfg)
    state = torch.load(_latest_checkpoint(tmp_path / "g") / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["rollbacks"] == 0  # the last healthy report: end of pretraining
    # The run failed, so nothing at its end wrote these: the live record, as of its last healthy report.
    run = tmp_path / "g"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert records[1]["loss_d_r1"] > 0  # D's pretraining ran the R1 penalty on both ranks
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]
    events = read_events(str(run))
    assert sorted(events["probe_fd"]) == [2, 4] and sorted(events["samples"]) == [2, 4]
    assert events["samples"][4].startswith(b"\x89PNG")


def test_run_with_label_consistency_spectral_norm_exports_its_best_report(ray_session, digit_sets,
                                                                          labelled_real_sets, tmp_path, monkeypatch):
    """A 1-worker run with the label-consistency term (its classifier trained on synthetic labels and
    kept in the run), a spectrally normalised two-scale D, `probe.export: best` and MLflow tracking: the export
    holds the weights of the lowest-probe_fd report, recorded with its step, also after a resume, and
    MLflow one run over both attempts."""
    from simgan_ray.measures.probe import ProbeSpec, build_probe

    probe = str(tmp_path / "probe")
    build_probe(ProbeSpec(real_train=labelled_real_sets["dev"], reference=digit_sets["real"], out=probe,
                          train_images=200, epochs=1, reference_images=100))
    overrides = small_run(digit_sets, tmp_path, "c", **{
        "run.report_every": 2, "run.checkpoint_every": 4, "optimizer_r.lr": 0.01,
        "probe.uri": probe, "probe.images": 32, "probe.export": "best",
        "consistency.weight": 1.0, "consistency.images": 200, "consistency.epochs": 1,
        "discriminator.spectral_norm": True, "discriminator.scales": 2, "tracking.mlflow_uri": f"file://{tmp_path}/mlruns",
    })
    first = fit(load_config(None, overrides))
    run = tmp_path / "c"
    label_net = json.loads((run / "consistency" / "net.json").read_text())
    assert label_net["train_images"] == 180 and 0 <= label_net["heldout_error"] <= 1  # 2 updates: untrained
    adversarial = [m for m in first.metrics if m["phase"] == "adversarial"]
    assert all("loss_r_label" in m and 0 <= m["label_kept"] <= 1 for m in adversarial)

    def check_best(result):
        best = min(result.metrics, key=lambda m: m["probe_fd"])
        _, meta = load_export(run / "export")
        assert (meta["export"], meta["weights_step"], meta["step"]) == ("best", best["step"], result.step)
        assert meta["weights_probe_fd"] == best["probe_fd"] and result.export_step == best["step"]
        state = torch.load(_latest_checkpoint(run) / "state.pt", weights_only=True)
        exported = torch.load(run / "export" / "refiner.pt", weights_only=True)
        assert state["best"]["step"] == best["step"]
        assert all(torch.equal(exported[k], v) for k, v in state["best"]["refiner"].items())

    check_best(first)
    modified = (run / "consistency" / "net.pt").stat().st_mtime_ns
    second = fit(load_config(None, {**overrides, "schedule.steps": 12}), resume=True)
    assert second.step == 16 and [m["step"] for m in second.metrics] == list(range(2, 17, 2))
    check_best(second)
    assert (run / "consistency" / "net.pt").stat().st_mtime_ns == modified  # the resume kept its classifier

    # MLflow (a local file store): one run for both attempts, the config as parameters, every report's
    # numbers, a grid per checkpoint.
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(f"file://{tmp_path}/mlruns")
    (logged,) = client.search_runs([client.get_experiment_by_name("simgan-ray").experiment_id])
    assert logged.info.run_name == "c" and logged.data.params["consistency.weight"] == "1.0"
    history = client.get_metric_history(logged.info.run_id, "probe_fd")
    assert sorted((m.step, m.value) for m in history) == [(m["step"], m["probe_fd"]) for m in second.metrics]
    assert [a.path for a in client.list_artifacts(logged.info.run_id, "samples")][-1] == "samples/step-000016.png"
