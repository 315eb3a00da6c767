import json
import subprocess

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from simgan_ray.apply.evaluate import EvalConfig, evaluate
from simgan_ray.apply.report import EvalReport, ReportedOn
from simgan_ray.common.errors import SimganError
from simgan_ray.measures.classifier import frechet_distance
from simgan_ray.measures.probe import ProbeSpec, build_probe, load_probe
from simgan_ray.model.export import write_export
from simgan_ray.model.networks import Refiner, RefinerConfig
from simgan_ray.sets.data import load_set
from simgan_ray.training.config import load_config
from simgan_ray.training.train import preflight
from tests.conftest import BIN, TINY


def test_frechet_distance_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([3.0, 0.0, 4.0])
    assert frechet_distance(a, shifted) == pytest.approx(25.0, rel=1e-6)  # same covariance: |d|^2
    scaled = a * 2.0  # N(0, I) vs N(0, 4I): Tr(I + 4I - 2*2I) = 3
    assert frechet_distance(a, scaled) == pytest.approx(3.0, rel=0.05)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("export")
    write_export(d, Refiner(RefinerConfig(features=4, blocks=1)), {"image_shape": [1, 28, 28]})
    return str(d)


def small(**kw) -> dict:
    return {"seeds": 2, "train_images": 256, "test_images": 200, "epochs": 1, "batch_size": 64, **kw}


def test_evaluate_reports_table_realism_and_labels(ray_session, digit_sets, labelled_real_sets, export, tmp_path):
    cfg = EvalConfig(synthetic=digit_sets["synthetic"], real_train=labelled_real_sets["dev"],
                     real_test=labelled_real_sets["val"], real_pool=digit_sets["real"], out=str(tmp_path / "rep"),
                     refiner=export, groups=["first=val-000000..val-000099", "second=val-000100..val-000199"],
                     **small())
    report = evaluate(cfg)
    # Two equal groups: each seed's error on the whole is the mean of its errors on the two.
    assert report.groups == {"first": 100, "second": 100}
    for source, whole in report.test_error.items():
        halves = report.group_error["first"][source].runs, report.group_error["second"][source].runs
        assert whole.runs == pytest.approx([(a + b) / 2 for a, b in zip(*halves, strict=True)])
    assert "| second | 100 |" in (tmp_path / "rep" / "report.md").read_text()
    for source in ("synthetic", "refined", "real"):
        e = report.test_error[source]
        assert len(e.runs) == 2 and 0 <= e.mean <= 1 and e.sd >= 0
    # From the per-seed errors, not the report's own means: (mean raw - mean refined) / mean raw.
    raw, refined = (sum(report.test_error[s].runs) / 2 for s in ("synthetic", "refined"))
    assert report.relative_error_reduction == pytest.approx((raw - refined) / raw)
    runs = report.test_error["synthetic"].runs
    assert report.test_error["synthetic"].sd == pytest.approx(abs(runs[0] - runs[1]) / 2 ** 0.5)
    for key in ("two_sample_accuracy", "label_preservation"):
        assert set(getattr(report, key)) == {"synthetic", "refined"}
        assert all(0 <= v <= 1 for v in getattr(report, key).values())
    assert report.frechet_distance["refined"] > 0
    assert report.counts == {"synthetic": 256, "real_train": 256, "real_test": 200, "real_pool": 256}
    assert report.reported_on == ReportedOn(kind="val", final=False)  # choices are made on val
    for name in ("report.json", "report.md", "samples.png", "errors.png"):
        assert (tmp_path / "rep" / name).exists()
    assert EvalReport.from_json((tmp_path / "rep" / "report.json").read_text()) == report
    assert "Relative error reduction" in (tmp_path / "rep" / "report.md").read_text()


def test_the_test_set_is_read_only_with_final_and_never_trained_on(digit_sets, labelled_real_sets, export, tmp_path):
    """Before any classifier trains: a test-kind set as the report set needs --final; as the ceiling's
    training set, the realism pool, the probe's sets or a training set it is refused outright."""
    sets = {"synthetic": digit_sets["synthetic"], "real_train": labelled_real_sets["dev"],
            "real_test": labelled_real_sets["test"], "real_pool": digit_sets["real"], "out": str(tmp_path / "r")}
    with pytest.raises(SimganError, match=r"--real-test .*: a test set \(manifest kind 'test'\) is read once per "
                                          r"reported configuration: choose on val .* with --final"):
        evaluate(EvalConfig(**sets, refiner=export, **small()))
    for field in ("real_train", "real_pool"):
        with pytest.raises(SimganError, match=f"--{field.replace('_', '-')} .*a test set .* is never trained on"):
            evaluate(EvalConfig(**{**sets, field: labelled_real_sets["test"]}, refiner=export, final=True, **small()))
    for field in ("real_train", "reference"):
        spec = {"real_train": labelled_real_sets["dev"], "reference": digit_sets["real"], "out": str(tmp_path / "p"),
                field: labelled_real_sets["test"]}
        with pytest.raises(SimganError, match=f"--{field.replace('_', '-')} .*a test set .* never serves the probe"):
            build_probe(ProbeSpec(**spec))
    cfg = load_config(None, {**TINY, "data.synthetic": digit_sets["synthetic"], "data.real": labelled_real_sets["test"],
                             "run.storage": str(tmp_path / "runs")})
    with pytest.raises(SimganError, match="data.real .*a test set .* is never trained on"):
        preflight(cfg)
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists() and not (tmp_path / "runs").exists()


def test_final_evaluation_on_the_test_set_is_recorded(ray_session, digit_sets, labelled_real_sets, export, tmp_path):
    cfg = EvalConfig(synthetic=digit_sets["synthetic"], real_train=labelled_real_sets["dev"],
                     real_test=labelled_real_sets["test"], real_pool=digit_sets["real"], out=str(tmp_path / "final"),
                     refiner=export, final=True, seeds=1, train_images=64, test_images=50, epochs=1, batch_size=32)
    report = evaluate(cfg)
    assert report.reported_on == ReportedOn(kind="test", final=True)
    assert "the final, test-set measurement" in (tmp_path / "final" / "report.md").read_text()


def test_evaluate_groups_by_label_field_and_refuses_bad_groups(ray_session, digit_sets, labelled_real_sets, export,
                                                               tmp_path):
    sets = {"synthetic": digit_sets["synthetic"], "real_train": labelled_real_sets["dev"],
            "real_test": labelled_real_sets["val"], "real_pool": digit_sets["real"], "refiner": export}
    report = evaluate(EvalConfig(**sets, out=str(tmp_path / "by-digit"), group_label="digit", **small(seeds=1)))
    assert sorted(report.groups) == [str(d) for d in range(10)] and sum(report.groups.values()) == 200
    with pytest.raises(ValidationError, match="'writers' is not NAME=FIRST..LAST"):
        EvalConfig(**sets, out=str(tmp_path / "x"), groups=["writers"])
    with pytest.raises(ValidationError, match="not both"):
        EvalConfig(**sets, out=str(tmp_path / "x"), groups=["a=x..y"], group_label="digit")
    with pytest.raises(SimganError, match="group later: none of the 200 test images"):
        evaluate(EvalConfig(**sets, out=str(tmp_path / "x"), groups=["later=val-900000..val-999999"], **small()))
    with pytest.raises(SimganError, match="has no label field 'font'"):
        evaluate(EvalConfig(**sets, out=str(tmp_path / "y"), group_label="font", **small()))


@pytest.mark.slow
def test_evaluate_refuses_bad_requests(digit_sets, labelled_real_sets, export, tmp_path):
    base = {"synthetic": digit_sets["synthetic"], "real_train": labelled_real_sets["dev"],
            "real_test": labelled_real_sets["val"], "real_pool": digit_sets["real"], "out": str(tmp_path)}
    with pytest.raises(SimganError, match="exactly one of --refiner"):
        evaluate(EvalConfig(**base, **small()))
    with pytest.raises(SimganError, match="integer 'digit'"):  # the real pool has no labels
        evaluate(EvalConfig(**{**base, "real_train": digit_sets["real"]}, refiner=export, **small()))
    out = subprocess.run([str(BIN), "evaluate",
                          "--synthetic", base["synthetic"], "--real-train", base["real_train"],
                          "--real-test", base["real_test"], "--real-pool", base["real_pool"], "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "exactly one of --refiner" in out.stderr


def test_probe_never_reads_the_test_set_and_scores(labelled_real_sets, digit_sets, tmp_path):
    cfg = ProbeSpec(real_train=labelled_real_sets["dev"], reference=digit_sets["real"], out=str(tmp_path / "probe"),
                    train_images=256, epochs=1, batch_size=64, reference_images=200)
    # Sweeps select by the probe: its reference is the real pool, its own error a held-out tenth of dev.
    meta = build_probe(cfg)
    assert (meta.train_images, meta.heldout_images, meta.reference_images) == (231, 25, 200)
    assert meta.reference == digit_sets["real"] and labelled_real_sets["test"] not in str(meta)
    assert 0 <= meta.heldout_error <= 1
    probe = load_probe(str(tmp_path / "probe"), cfg.s3)
    assert probe.meta == meta  # probe.json holds the result
    x, _ = load_set(digit_sets["real"], 200, cfg.s3, None)
    own = probe.score(x, np.zeros(len(x), np.int64))
    assert own["probe_fd"] == pytest.approx(0.0, abs=1e-3)  # the reference set against itself
    sx, sy = load_set(digit_sets["synthetic"], 200, cfg.s3, "digit")
    assert probe.score(sx, sy)["probe_fd"] > own["probe_fd"]
    with pytest.raises(SimganError, match="is not a probe"):
        load_probe(str(tmp_path), cfg.s3)
    # A probe of format 1 (test-set reference) is refused with what to do.
    old = tmp_path / "probe" / "probe.json"
    old.write_text(json.dumps({**json.loads(old.read_text()), "format": "simgan-ray-probe/1"}))
    with pytest.raises(SimganError, match="rebuild it with `simgan-ray probe`"):
        load_probe(str(tmp_path / "probe"), cfg.s3)
    with pytest.raises(SimganError, match="50 labelled images; >= 100 needed"):
        build_probe(cfg.model_copy(update={"out": str(tmp_path / "p2"), "train_images": 50}))


def test_regression_errors_by_hand():
    from simgan_ray.measures.classifier import primary_error, regression_errors

    y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pred = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # the same direction; 45 degrees off
    errors = regression_errors(pred, y)
    assert errors["angle_deg"] == pytest.approx(22.5)  # mean of 0 and 45
    assert errors["mae"] == pytest.approx(2 / 6) and errors["l2"] == pytest.approx(1.0)
    four = np.array([[0.6, 0.0, -0.8, 0.0]])  # UnityEyes' (x, y, z, 0): the angle of the first three
    assert regression_errors(np.array([[0.0, 0.6, -0.8, 5.0]]), four)["angle_deg"] == pytest.approx(
        np.degrees(np.arccos(0.64)))
    scalar = regression_errors(np.array([[1.0], [3.0]]), np.array([[2.0], [2.0]]))
    assert scalar == {"mae": 1.0, "l2": 1.0} and primary_error(scalar) == "mae"
    assert primary_error(errors) == "angle_deg"


@pytest.fixture(scope="module")
def rotation_sets(tmp_path_factory):
    """Renders of another simulator seed (dimmed) with their full annotations, as dev and val sets:
    a regression target the digit simulator labels (the rotation, degrees)."""
    from simgan_ray.sets import simulate
    from tests.conftest import write_set

    root = tmp_path_factory.mktemp("rotation")
    fonts = simulate.discover_fonts(tuple(str(d) for d in simulate.default_font_dirs()))
    out = {}
    for name, seed in (("dev", 31), ("val", 33)):
        _, images, labels = simulate.render_range(0, 300, seed, fonts)
        write_set(root / name, name, (images.astype(np.float32) * 0.8).astype(np.uint8), labels, 100)
        out[name] = str(root / name)
    return out


def test_evaluate_regression_of_the_rotation(ray_session, digit_sets, rotation_sets, export, tmp_path):
    """The whole regression path: a CNN learns each digit's rotation from raw synthetic digits and is
    scored on held-out renders (a pipeline check, not a sim-to-real result)."""
    cfg = EvalConfig(synthetic=digit_sets["synthetic"], real_train=rotation_sets["dev"],
                     real_test=rotation_sets["val"], real_pool=digit_sets["real"], out=str(tmp_path / "reg"),
                     refiner=export, task="regression", label_key="rotation", **small(epochs=20, seeds=1))
    report = evaluate(cfg)
    assert report.task == "regression" and report.error_measure == "mae"
    _, rotation = load_set(rotation_sets["val"], 200, cfg.s3, "rotation", regression=True)
    spread = float(np.abs(rotation - rotation.mean()).mean())  # the MAE of always guessing the mean
    for source in ("synthetic", "refined", "real"):
        e = report.test_errors[source]
        assert set(e) == {"mae", "l2"} and e["mae"].runs == report.test_error[source].runs
    assert report.test_error["real"].mean < spread  # it learned something
    assert 0 <= report.label_preservation["synthetic"] < 2 * spread
    text = (tmp_path / "reg" / "report.md").read_text()
    assert "regression of 'rotation'" in text and "| (c) real (ceiling) |" in text
    with pytest.raises(SimganError, match="a number or a list of numbers 'font'"):
        evaluate(cfg.model_copy(update={"label_key": "font", "out": str(tmp_path / "bad")}))
