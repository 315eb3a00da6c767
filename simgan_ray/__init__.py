"""simgan-ray: distributed SimGAN (Shrivastava et al., CVPR 2017) training and bulk refinement on Ray.

The Python API, for notebooks and scripts: the CLI's commands as functions, config objects in,
result objects out. Each call joins the Ray initialised in this process (`ray.init(...)` first to
use a cluster) or starts a local one; errors are `SimganError` with a one-line message.

    import simgan_ray as sg

    cfg = sg.load_config("jobs/digits-demo.yaml", {"run.name": "nb-1", "schedule.steps": 300})
    run = sg.fit(cfg)                                # FitResult: run_uri, metrics, export_uri, ...
    refiner, meta = sg.load_export(run.export_uri)   # a torch module; sg.refine_images(refiner, uint8 NCHW)
    report = sg.run_evaluation(sg.EvalConfig(synthetic="data/digits/synthetic", refiner=run.run_uri, ...))
    report.relative_error_reduction, report.test_error["refined"].mean   # EvalReport, report.json's fields
    sg.run_refine(sg.RefineJob(model=run.run_uri, input="data/digits/synthetic", output="runs/refined"))

Names resolve on first use, so `import simgan_ray` stays cheap and a worker importing one module
does not import the rest. (The jobs are not called train / refine / evaluate: those are the modules
simgan_ray.train, .refine, .evaluate, which Python binds on the package once imported.)
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING

__version__ = metadata.version("simgan-ray")  # pyproject.toml's, as installed

if TYPE_CHECKING:
    from simgan_ray.checkpoints import load_export, refine_images
    from simgan_ray.config import TrainConfig, load_config, with_overrides
    from simgan_ray.errors import SimganError
    from simgan_ray.evaluate import EvalConfig
    from simgan_ray.evaluate import evaluate as run_evaluation
    from simgan_ray.probe import ProbeInfo, ProbeSpec, build_probe
    from simgan_ray.refine import RefineJob, RefineSummary, load_refine_job
    from simgan_ray.refine import refine as run_refine
    from simgan_ray.report import EvalReport, ReportedOn, Spread
    from simgan_ray.train import FitResult, fit
    from simgan_ray.tune import SweepResult, Trial, TuneSpec, load_spec, run_sweep

# public name -> (module, attribute)
_API = {
    "TrainConfig": ("config", "TrainConfig"),
    "load_config": ("config", "load_config"),
    "with_overrides": ("config", "with_overrides"),
    "fit": ("train", "fit"),
    "FitResult": ("train", "FitResult"),
    "ProbeSpec": ("probe", "ProbeSpec"),
    "ProbeInfo": ("probe", "ProbeInfo"),
    "build_probe": ("probe", "build_probe"),
    "TuneSpec": ("tune", "TuneSpec"),
    "load_spec": ("tune", "load_spec"),
    "run_sweep": ("tune", "run_sweep"),
    "SweepResult": ("tune", "SweepResult"),
    "Trial": ("tune", "Trial"),
    "RefineJob": ("refine", "RefineJob"),
    "RefineSummary": ("refine", "RefineSummary"),
    "load_refine_job": ("refine", "load_refine_job"),
    "run_refine": ("refine", "refine"),
    "EvalConfig": ("evaluate", "EvalConfig"),
    "run_evaluation": ("evaluate", "evaluate"),
    "EvalReport": ("report", "EvalReport"),
    "ReportedOn": ("report", "ReportedOn"),
    "Spread": ("report", "Spread"),
    "load_export": ("checkpoints", "load_export"),
    "refine_images": ("checkpoints", "refine_images"),
    "SimganError": ("errors", "SimganError"),
}
__all__ = [
    "EvalConfig",
    "EvalReport",
    "FitResult",
    "ProbeInfo",
    "ProbeSpec",
    "RefineJob",
    "RefineSummary",
    "ReportedOn",
    "SimganError",
    "Spread",
    "SweepResult",
    "TrainConfig",
    "Trial",
    "TuneSpec",
    "build_probe",
    "fit",
    "load_config",
    "load_export",
    "load_refine_job",
    "load_spec",
    "refine_images",
    "run_evaluation",
    "run_refine",
    "run_sweep",
    "with_overrides",
]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'simgan_ray' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(f"simgan_ray.{module}"), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
