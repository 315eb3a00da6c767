"""Hyperparameter sweeps: Ray Tune over Ray Train runs, ranked by a real-data metric.

Each trial is a driver function that builds its own TorchTrainer (the Train V2 pattern, not the
deprecated `Tuner(trainer)`); a Train callback forwards every report to the trial, which reports it
to Tune. With ASHA, Tune stops the weaker trials early. With PBT, every Train checkpoint is also
reported as the trial's Tune checkpoint: PBT restarts a weak trial from a strong trial's checkpoint
with mutated hyperparameters, which `fit` resumes as a new Train run (`resume_from`).

The spec (what to search, how to schedule and rank: `spec.py`) comes in loaded. The ranking
metric comes from the probe (see ProbeConfig): `probe_fd`, the Frechet distance of
refined synthetic images to reference real images (kept apart from the test set, which the
selection must not see) in the feature space of a classifier trained on real labelled images,
reported at every training report.

Outputs in <storage>/<name>/: results.csv and results.md (one row per trial, best first),
best.yaml (the best trial's full train config) and best/export (its refiner).
"""

from __future__ import annotations

import tempfile
import threading
import uuid

import yaml
from ray.train import UserCallback

from simgan_ray import storage
from simgan_ray.common.errors import SimganError
from simgan_ray.measures.probe import ProbeInfo, ProbeSpec, build_probe, load_probe
from simgan_ray.runtime.session import check_resources, ensure_ray
from simgan_ray.sets import data, shards
from simgan_ray.storage import ownership
from simgan_ray.storage.ownership import Output
from simgan_ray.sweeps.asha import ReplayedASHA
from simgan_ray.sweeps.results import SweepResult, Trial, by_val, rank, spearman, write_results
from simgan_ray.sweeps.spec import TuneSpec
from simgan_ray.sweeps.validate import validate_trials
from simgan_ray.training.config import TrainConfig, dump_config, with_overrides
from simgan_ray.training.train import DATA_CPUS, RESOURCE_FIELDS, fit, worker_resources

TRIAL_DRIVER_CPU = 0.01  # the trial function only drives its TorchTrainer


class _ForwardReports(UserCallback):
    """Train callback (it runs in the Train controller actor): every report's metrics, plus the run
    name, and its checkpoint go into a queue read by the trial function."""

    def __init__(self, queue, run: str):
        self.queue, self.run = queue, run

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put(({**metrics[0], "run": self.run}, checkpoint))


def _trial(params: dict, base: dict, trials_storage: str, report_checkpoints: bool) -> None:
    """One trial: the base config plus this trial's parameters, trained by `fit` in a thread while
    this function reports each Train report to Tune (with a copy of its checkpoint for PBT).
    Restarted by PBT, the trial resumes the checkpoint it was given as a new Train run; restarted
    with its sweep (`run_sweep(resume=True)`), it resumes its own Train run from its latest checkpoint."""
    from ray import tune
    from ray.train import Checkpoint
    from ray.util.queue import Queue

    start = tune.get_checkpoint()  # None on a first start
    trial_id = tune.get_context().get_trial_id()
    name = trial_id if start is None else f"{trial_id}-{uuid.uuid4().hex[:6]}"
    cfg = with_overrides(TrainConfig.model_validate(base), {**params, "run.storage": trials_storage, "run.name": name})
    queue = Queue(actor_options={"num_cpus": 0})
    forward = _ForwardReports(queue, name)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fit(cfg, callbacks=[forward], resume_from=start, resume="auto" if start is None else False)
        except BaseException as e:  # re-raised below, in the trial's own thread
            failure.append(e)
        finally:
            queue.put(None)

    def report(metrics: dict, checkpoint) -> None:
        if not (report_checkpoints and checkpoint is not None):
            return tune.report(metrics)
        with tempfile.TemporaryDirectory() as d:
            checkpoint.to_directory(d)
            tune.report(metrics, checkpoint=Checkpoint.from_directory(d))

    thread = threading.Thread(target=run, name=f"fit-{name}", daemon=True)
    thread.start()
    final = None
    while (item := queue.get()) is not None:
        if item[0]["step"] >= cfg.schedule.total_steps:
            final = item  # Tune stops the trial on its last step: report it once `fit` wrote the export
        else:
            report(*item)
    thread.join()
    queue.shutdown()
    if failure:
        raise failure[0]
    if final is not None:
        report(*final)


def ensure_probe(spec: TuneSpec, base: TrainConfig) -> ProbeInfo:
    """The sweep's probe's record: loaded, or built from the spec's sets on the first sweep."""
    s3 = base.data.s3
    if storage.exists(storage.join(spec.probe.uri, "probe.json"), s3):
        return load_probe(spec.probe.uri, s3).meta
    return build_probe(ProbeSpec(real_train=spec.probe.real_train, reference=spec.probe.reference, out=spec.probe.uri,
                                 train_images=spec.probe.train_images, epochs=spec.probe.epochs, s3=s3))


def preflight(spec: TuneSpec, base: TrainConfig, resume: bool = False) -> str:
    """Every check of `run_sweep` that needs no Ray, writing nothing (`tune --dry-run`): the sweep's
    folder holds no sweep (or, to `resume`, this sweep), the trials' data sets pass training's checks,
    and the probe loads or the sets it would be built from are image sets. -> the sweep's folder."""
    s3 = base.data.s3
    out = storage.join(storage.normalize(spec.storage), spec.name)
    if resume and (ownership.read_owner(out, s3) or {}).get("command") != "tune":
        raise SimganError(f"{out}: no simgan-ray sweep to continue there")
    ownership.plan(out, "tune", s3, **_claim_options(spec, base, resume))
    data.check_training_sets(base.data.synthetic, base.data.real, base.refiner.channels,
                             base.batch_size * base.run.num_workers, s3)
    built = storage.exists(storage.join(spec.probe.uri, "probe.json"), s3)
    if built:
        load_probe(spec.probe.uri, s3)
    for name, source in (("probe.real_train", spec.probe.real_train), ("probe.reference", spec.probe.reference)):
        if not built or storage.exists(source, s3):  # a probe built elsewhere need not have its sets here
            shards.refuse_test_set(name, source, s3, "never ranks trials: the sweep selects by the probe (use dev and "
                            "the real pool)")
    return out


def _claim_options(spec: TuneSpec, base: TrainConfig, resume: bool) -> dict:
    return {"inputs": {"data.synthetic": base.data.synthetic, "data.real": base.data.real, "probe.uri": spec.probe.uri},
            "resume": resume, "refusal": "continue it with --resume, or pick another name"}


def run_sweep(spec: TuneSpec, base: TrainConfig, resume: bool = False) -> SweepResult:
    """Run the sweep in its claimed folder; write results.csv/.md, best.yaml and best/export. `resume`:
    continue a sweep that was stopped (Tune's own state in the folder): finished trials are kept,
    unfinished and errored ones go on, each training run from its latest checkpoint."""
    out = preflight(spec, base, resume)
    # Each running trial holds its workers' CPUs plus its driver's sliver; Ray Data needs one more.
    # Before the claim: nothing is written where Ray cannot start.
    ensure_ray(spec.max_concurrent_trials * (base.run.num_workers * base.run.cpus_per_worker + TRIAL_DRIVER_CPU))
    check_resources(worker_resources(base), base.run.num_workers, RESOURCE_FIELDS, spare_cpus=DATA_CPUS)
    with ownership.claimed(out, "tune", base.data.s3, **_claim_options(spec, base, resume)) as claim:
        return _sweep(spec, base, claim, resume)


def _sweep(spec: TuneSpec, base: TrainConfig, claim: Output, resume: bool) -> SweepResult:
    from ray import tune

    s3, out = base.data.s3, claim.uri
    _keep_spec(claim, spec, base, resume)
    probe_meta = ensure_probe(spec, base)
    fs, path = storage.resolve(storage.normalize(spec.storage), s3)
    trials_storage = storage.join(out, "trials")
    total = base.schedule.total_steps
    if spec.scheduler == "pbt":
        scheduler = tune.schedulers.PopulationBasedTraining(
            time_attr="step", perturbation_interval=spec.perturbation_interval,
            hyperparam_mutations={key: dist.to_tune() for key, dist in spec.search.items()},
            quantile_fraction=spec.quantile_fraction, resample_probability=spec.resample_probability,
            synch=spec.synch,
        )
    else:
        scheduler = ReplayedASHA(trials_storage, s3, time_attr="step", max_t=total,
                                 grace_period=min(spec.grace_period, total), reduction_factor=spec.reduction_factor)
    trainable = tune.with_parameters(_trial, base=base.to_dict(), trials_storage=trials_storage,
                                     report_checkpoints=spec.scheduler == "pbt")
    # The workers hold the CPUs; Tune refuses an empty request, hence a sliver for the driver.
    trainable = tune.with_resources(trainable, {"cpu": TRIAL_DRIVER_CPU})
    param_space = {key: dist.to_tune() for key, dist in spec.search.items()}
    state = f"{path.rstrip('/')}/{spec.name}"  # Tune's experiment folder: the sweep's own
    if resume:
        if not tune.Tuner.can_restore(state, storage_filesystem=fs):
            raise SimganError(f"{out}: no sweep state to continue (the sweep stopped before Tune saved any); "
                              "start it under another name")
        tuner = tune.Tuner.restore(state, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space, storage_filesystem=fs)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                                        num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent_trials),
            # PBT warns that keeping <= 2 checkpoints can delete one it is about to clone.
            run_config=tune.RunConfig(name=spec.name, storage_path=path, storage_filesystem=fs, stop={"step": total},
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=4)),
        )
    results = tuner.fit()
    trials = []
    for result in results:
        if result.error is not None or not result.metrics:
            trials.append(Trial(trial=result.path.rsplit("/", 1)[-1], status=f"error: {result.error}"))
            continue
        m = result.metrics
        trials.append(Trial(trial=m["trial_id"], run=m["run"], status="ok", step=m["step"],
                            metrics={k: m.get(k) for k in (spec.metric, "probe_label_acc")},
                            params={k: result.config[k] for k in spec.search}))
    trials = rank(trials, spec, total)
    if trials[0].status != "ok" or trials[0].metrics.get(spec.metric) is None:
        raise SimganError(f"{out}: no trial finished with {spec.metric}; see the trial logs under {out}")
    correlation = None
    if spec.validation is not None:
        validate_trials(trials, spec.validation, base, out, trials_storage)
        both = [t for t in trials if t.metrics.get("val_error") is not None]
        correlation = spearman([t.metrics[spec.metric] for t in both], [t.metrics["val_error"] for t in both])
        if spec.rank_by == "val":
            trials = by_val(trials)
    best = trials[0]  # among trials that ran to the end (they have an export)
    write_results(claim, trials, spec, correlation)
    best_cfg = with_overrides(base, {**best.params, "run.storage": trials_storage, "run.name": best.run})
    best_export = storage.join(trials_storage, best.run, "export")
    claim.write({"best.yaml": dump_config(best_cfg).encode(),
                 **{f"best/export/{name}": storage.read_bytes(storage.join(best_export, name), s3)
                    for name in ("refiner.pt", "refiner.json")}})
    return SweepResult(out=out, trials=trials, probe_heldout_error=probe_meta.heldout_error,
                       rank_correlation=correlation)


def _keep_spec(claim: Output, spec: TuneSpec, base: TrainConfig, resume: bool) -> None:
    """The sweep's resolved spec and base config, written beside its trials first (so that a sweep
    stopped before any result is still this sweep's, to resume); a resume must bring the same."""
    files = {"sweep.yaml": yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode(),
             "base.yaml": dump_config(base).encode()}
    if resume:
        changed = [name for name, text in files.items()
                   if storage.exists(storage.join(claim.uri, name), base.data.s3)
                   and storage.read_bytes(storage.join(claim.uri, name), base.data.s3) != text]
        if changed:
            raise SimganError(f"{claim.uri}: resuming with another spec than the sweep's ({', '.join(changed)} "
                              "differ): give the spec it was started with")
    claim.write(files)
