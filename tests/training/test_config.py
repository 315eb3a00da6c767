from pathlib import Path

import pytest

from simgan_ray.common.errors import SimganError
from simgan_ray.common.yamlfiles import parse_override
from simgan_ray.training.config import dump_config, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_paper_defaults():
    cfg = load_config()
    assert (cfg.refiner.features, cfg.refiner.blocks) == (64, 4)
    assert cfg.discriminator.widths == (96, 64, 32, 32)
    assert (cfg.schedule.pretrain_refiner_steps, cfg.schedule.pretrain_discriminator_steps) == (1000, 200)
    assert (cfg.schedule.k_g, cfg.schedule.k_d) == (2, 1)


def test_resolve_order_defaults_file_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 16\nloss: {lam: 0.3}\nschedule: {steps: 7}\n")
    cfg = load_config(f, {"schedule.steps": 9})
    assert cfg.batch_size == 16  # file beats default
    assert cfg.loss.lam == 0.3 and cfg.loss.psi == "identity"  # untouched fields keep defaults
    assert cfg.schedule.steps == 9  # CLI beats file


def test_job_specs_validate():
    import yaml

    from simgan_ray.apply.refine import load_refine_job
    from simgan_ray.sweeps.spec import load_spec

    jobs = sorted((ROOT / "jobs").glob("*.yaml"))
    assert {j.name for j in jobs} >= {"digits.yaml", "digits-tune.yaml", "eyes.yaml", "refine-1m.yaml"}
    for job in jobs:
        raw = yaml.safe_load(job.read_text())
        if "search" in raw:
            spec, base = load_spec(job)
            assert spec.search and base.probe.uri == spec.probe.uri
        elif "input" in raw:
            loaded = load_refine_job(job, {})
            assert loaded.model and loaded.input and loaded.output != loaded.input
        else:
            load_config(job)
    eyes = load_config(ROOT / "jobs" / "eyes.yaml")  # the paper's gaze setting on 4 GPUs
    assert (eyes.run.num_workers, eyes.batch_size * eyes.run.num_workers, eyes.run.gpus_per_worker) == (4, 512, 1)
    assert (eyes.refiner.features, eyes.refiner.blocks, eyes.discriminator.widths) == (64, 4, (96, 64, 32, 32))


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(ROOT / "jobs" / "digits.yaml")
    f = tmp_path / "resolved.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(f) == cfg


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("loss: {lam: -1}\n", ["loss.lam", "greater than or equal to 0"]),
        ("bogus_key: 3\n", ["bogus_key"]),
        ("refiner: {featurez: 3}\n", ["refiner.featurez"]),
        ("schedule: {k_g: 0}\n", ["schedule.k_g"]),
        ("batch_size: many\n", ["batch_size", "integer"]),
        ("refiner: {channels: 3}\n", ["discriminator.channels"]),
        ("- a list\n", ["mapping"]),
        ("a: [unclosed\n", ["not valid YAML"]),
    ],
)
def test_errors_name_the_file_and_field(tmp_path, text, names):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SimganError) as e:
        load_config(f)
    assert str(f) in str(e.value)
    for name in names:
        assert name in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_override():
    with pytest.raises(SimganError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")
    with pytest.raises(SimganError, match="KEY=VALUE"):
        parse_override("schedule.steps")
    assert parse_override("loss.lam=0.5") == ("loss.lam", 0.5)
    assert parse_override("discriminator.widths=[1,2,3,4]") == ("discriminator.widths", [1, 2, 3, 4])
