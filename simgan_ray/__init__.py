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
does not import the rest.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING

__version__ = metadata.version("simgan-ray")  # pyproject.toml's, as installed

if TYPE_CHECKING:
    from simgan_ray.apply.evaluate import EvalConfig
    from simgan_ray.apply.evaluate import evaluate as run_evaluation
    from simgan_ray.apply.refine import RefineJob, RefineSummary, load_refine_job
    from simgan_ray.apply.refine import refine as run_refine
    from simgan_ray.apply.report import EvalReport, ReportedOn, Spread
    from simgan_ray.common.errors import SimganError
    from simgan_ray.measures.probe import ProbeInfo, ProbeSpec, build_probe
    from simgan_ray.model.export import load_export, refine_images
    from simgan_ray.sweeps.results import SweepResult, Trial
    from simgan_ray.sweeps.spec import TuneSpec, load_spec
    from simgan_ray.sweeps.tune import run_sweep
    from simgan_ray.training.config import TrainConfig, load_config, with_overrides
    from simgan_ray.training.train import FitResult, fit

# public name -> (module, attribute)
_API = {
    "TrainConfig": ("training.config", "TrainConfig"),
    "load_config": ("training.config", "load_config"),
    "with_overrides": ("training.config", "with_overrides"),
    "fit": ("training.train", "fit"),
    "FitResult": ("training.train", "FitResult"),
    "ProbeSpec": ("measures.probe", "ProbeSpec"),
    "ProbeInfo": ("measures.probe", "ProbeInfo"),
    "build_probe": ("measures.probe", "build_probe"),
    "TuneSpec": ("sweeps.spec", "TuneSpec"),
    "load_spec": ("sweeps.spec", "load_spec"),
    "run_sweep": ("sweeps.tune", "run_sweep"),
    "SweepResult": ("sweeps.results", "SweepResult"),
    "Trial": ("sweeps.results", "Trial"),
    "RefineJob": ("apply.refine", "RefineJob"),
    "RefineSummary": ("apply.refine", "RefineSummary"),
    "load_refine_job": ("apply.refine", "load_refine_job"),
    "run_refine": ("apply.refine", "refine"),
    "EvalConfig": ("apply.evaluate", "EvalConfig"),
    "run_evaluation": ("apply.evaluate", "evaluate"),
    "EvalReport": ("apply.report", "EvalReport"),
    "ReportedOn": ("apply.report", "ReportedOn"),
    "Spread": ("apply.report", "Spread"),
    "load_export": ("model.export", "load_export"),
    "refine_images": ("model.export", "refine_images"),
    "SimganError": ("common.errors", "SimganError"),
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
