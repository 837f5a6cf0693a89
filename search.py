"""`--mode search`: an Optuna study of real trainings on the train and validation rows, around the recipe's choice.

The study lives in a database (SQLite by default, any SQLAlchemy URL), so that a killed search resumes where it
stopped and several processes share one study. The first trial is the recipe's own choice, the baseline to beat;
trials that fall behind are pruned at their evaluations. The best trial is written as a config file that
`main.py --config best.yaml` trains, beside a report and plots of the trials. No trial reads the test rows.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

import train
from train import EvaluationHook
from utils.checkpoint.errors import UserError
from utils.config import Config, default_of, make_config
from utils.evaluation.metrics import SELECTION_METRIC
from utils.evaluation.search_report import write_search_report
from utils.training.search_space import SearchCentre, suggest_settings

HEARTBEAT_SECONDS = 5  # a trial whose process stops beating for twice this long is failed, and run again once
CENTRE_ATTRIBUTE = "centre"
BEST_CONFIG_FILE = "best.yaml"
TRIAL_OVERHEAD_SECONDS = 10.0  # a trial's start beyond the recipe's plan: reading the data, loading the model
# Settings of the search itself, not of the trainings it runs: left out of best.yaml
SEARCH_ONLY = ("mode", "config", "trials", "storage", "study_name", "output_dir", "time_budget",
               "resume_from_checkpoint", "push_to_hub", "checkpoint")
NEVER = 10**9  # steps between a trial's resumable states: none (a killed trial is run again from its start)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class SearchError(UserError):
    """A search that cannot give a result, saying what to change."""


class DeadlineReached(Exception):
    """The search's time budget ran out during a trial: the trial fails (it is not counted, and a search run again
    runs it afresh)."""


@dataclass(frozen=True)
class SearchPlan:
    """The study and what its trials share: the space, the end of the time budget, the metric."""

    study: optuna.Study
    centre: SearchCentre
    deadline: float
    metric: str


def run(config: Config) -> Path:
    """Run (or resume, or join) the study until it holds --trials finished trials or the time budget is spent;
    returns the best config file."""
    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    plan = open_study(config, folder)
    remaining = max(0.0, plan.deadline - time.time())
    print(f"search: study '{plan.study.study_name}', up to {config.trials} finished trials within "
          f"{remaining / 60:.1f} min (--trials, --time-budget); {len(finished(plan.study))} finished before")
    if len(finished(plan.study)) < config.trials:
        plan.study.optimize(lambda trial: objective(trial, config, plan, folder), timeout=remaining,
                            callbacks=[optuna.study.MaxTrialsCallback(config.trials, states=FINISHED)],
                            catch=(DeadlineReached,), gc_after_trial=True)
    return write_outcome(plan, config, folder)


def open_study(config: Config, folder: Path) -> SearchPlan:
    """The study in --storage, created or loaded, its space centred on the recipe the first process planned."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # heartbeats, their retries and constant_liar are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            config.storage or f"sqlite:///{folder.resolve() / 'study.db'}", heartbeat_interval=HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        # constant_liar: processes sharing the study spread out rather than try the same settings
        sampler = optuna.samplers.TPESampler(n_startup_trials=5, multivariate=True, constant_liar=True,
                                             seed=config.seed + os.getpid())
    name = config.study_name or f"search-{Path(config.data or '').stem}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                sampler=sampler, pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    started = time.time()
    centre, trial_seconds = study_centre(study, config, folder)
    if not any(t.user_attrs.get("baseline") and t.state != optuna.trial.TrialState.FAIL for t in study.trials):
        study.enqueue_trial(centre.recipe_settings(), user_attrs={"baseline": True})
    budget = 60 * config.time_budget if config.time_budget is not None else config.trials * trial_seconds
    return SearchPlan(study=study, centre=centre, deadline=started + budget, metric=SELECTION_METRIC[centre.task])


def study_centre(study: optuna.Study, config: Config, folder: Path) -> tuple[SearchCentre, float]:
    """The space's centre stored in the study, or planned here (the recipe's choice for the data) and stored; and
    the seconds one trial gets by default (the recipe's time budget for one training)."""
    stored = study.user_attrs.get(CENTRE_ATTRIBUTE)
    if stored is not None:
        return SearchCentre(**stored["centre"]), stored["trial_seconds"]
    # the recipe as one plain training would choose it: --time-budget is the whole search's here
    planned = train.plan(settings_with(config, output_dir=str(folder), time_budget=None))
    planned_seconds = TRIAL_OVERHEAD_SECONDS + sum(
        seconds for part, seconds in planned.recipe.planned_seconds.items() if part != "export")
    share = 1.0 if config.time_budget is None else min(1.0, 60 * config.time_budget / config.trials / planned_seconds)
    seconds = max(planned_seconds, planned.recipe.budget_seconds)
    centre = SearchCentre(
        task=planned.task, recipe=planned.recipe.values, learning_rate=config.learning_rate,
        layer_decay=config.layer_decay, loss=config.loss,
        class_weights=config.class_weights if config.class_weights in ("none", "auto") else "none",
        pos_weight=config.pos_weight if config.pos_weight in ("auto", "none") else "auto",
        layers=planned.layers, position_limit=planned.position_limit, epoch_share=share)
    if CENTRE_ATTRIBUTE not in study.user_attrs:  # a plan another process stored meanwhile is kept
        study.set_user_attr(CENTRE_ATTRIBUTE, {"centre": centre.to_dict(), "trial_seconds": seconds})
    time.sleep(1.0)  # two processes that stored a plan at once both go on with the one stored last
    stored = study.user_attrs[CENTRE_ATTRIBUTE]
    return SearchCentre(**stored["centre"]), stored["trial_seconds"]


def objective(trial: optuna.Trial, config: Config, plan: SearchPlan, folder: Path) -> float:
    """One real training with the trial's settings; its served validation metric. Its checkpoint is removed (the
    best is trained again from best.yaml); its recipe, metrics and data report stay in trials/NNN/."""
    settings = suggest_settings(trial, plan.centre)
    trial.set_user_attr("settings", settings)
    trial.set_user_attr("pid", os.getpid())
    output = folder / "trials" / f"{trial.number:03d}"
    shutil.rmtree(output, ignore_errors=True)  # a retried trial starts afresh
    trial_config = settings_with(config, **settings, mode="train", output_dir=str(output), export_onnx=False,
                                 save_every=NEVER, keep_last=1, time_budget=None, resume_from_checkpoint=None)
    print(f"trial {trial.number}: " + ", ".join(f"{name}={value}" for name, value in settings.items()))
    result = train.run(trial_config, on_evaluation=pruning(trial, plan.deadline))
    shutil.rmtree(result.checkpoint, ignore_errors=True)
    trial.set_user_attr("validation", {name: value for name, value in result.best_metrics.items()
                                       if isinstance(value, float)})
    return float(result.best_metrics[plan.metric])


def pruning(trial: optuna.Trial, deadline: float) -> EvaluationHook:
    """Reports each evaluation to the study; ends the trial where the pruner says it falls behind the others at
    the same step (from its second evaluation on), or where the search's time budget is spent."""
    evaluations = [0]

    def report(step: int, value: float) -> None:
        trial.report(value, step)
        evaluations[0] += 1
        if evaluations[0] > 1 and trial.should_prune():
            raise optuna.TrialPruned(f"validation {value:.4f} at step {step} behind the other trials'")
        if time.time() > deadline:
            raise DeadlineReached(f"the search's time budget ran out at step {step}")

    return report


def settings_with(config: Config, **changes: Any) -> Config:
    """`config` with `changes`, checked as any config is."""
    return make_config(**(config.to_dict() | changes))


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def write_outcome(plan: SearchPlan, config: Config, folder: Path) -> Path:
    """best.yaml (the best completed trial's settings over the ones given), the report and its plots."""
    completed = plan.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise SearchError(f"no trial of study '{plan.study.study_name}' completed within the time budget: give more "
                          "--time-budget, or run the same command again to go on with the study")
    best = max(completed, key=lambda trial: trial.value or 0.0)
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)
             if f.name not in SEARCH_ONLY and getattr(config, f.name) != default_of(f)}
    best_config = folder / BEST_CONFIG_FILE
    best_config.write_text(yaml.safe_dump(given | best.user_attrs["settings"] | {"mode": "train", "output_dir":
                                          str(folder / "best")}, sort_keys=False))
    write_search_report(plan.study, plan.metric, best, folder)
    baseline = next((t for t in completed if t.user_attrs.get("baseline")), None)
    print(f"best trial {best.number}: validation {plan.metric} {best.value:.4f}"
          + (f" (the recipe's: {baseline.value:.4f})" if baseline is not None else "")
          + f"; train it with: python main.py --config {best_config}")
    return best_config

