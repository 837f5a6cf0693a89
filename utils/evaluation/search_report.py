"""What a search found: every trial's settings, state and validation metrics (search_report.json), and pictures of
the metric over the trials, each trial's evaluations (where pruning cut them) and the settings' importances."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure

from utils.evaluation.plots import save_png

REPORT_FILE = "search_report.json"
PLOTS = {"search_history.png": optuna.visualization.matplotlib.plot_optimization_history,
         "search_evaluations.png": optuna.visualization.matplotlib.plot_intermediate_values,
         "search_importances.png": optuna.visualization.matplotlib.plot_param_importances}


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if (
        trial.datetime_complete and trial.datetime_start) else None
    return {"number": trial.number, "state": trial.state.name, "value": trial.value,
            "baseline": bool(trial.user_attrs.get("baseline")), "settings": trial.user_attrs.get("settings"),
            "validation": trial.user_attrs.get("validation"), "evaluations": len(trial.intermediate_values),
            "seconds": round(seconds, 1) if seconds is not None else None}


def write_search_report(study: optuna.Study, metric: str, best: optuna.trial.FrozenTrial, folder: Path) -> Path:
    """search_report.json and the PNG plots beside it; a plot that cannot be drawn yet (importances need two
    completed trials) is left out and said so in the report."""
    records = [trial_record(trial) for trial in study.get_trials(deepcopy=False)]
    baseline = next((r for r in records if r["baseline"] and r["state"] == "COMPLETE"), None)
    report: dict[str, Any] = {"study": study.study_name, "metric": f"validation {metric}", "best": trial_record(best),
                              "baseline": baseline, "trials": records, "plots": {}}
    for name, plot in PLOTS.items():
        report["plots"][name] = draw(plot, study, folder / name)
    path = folder / REPORT_FILE
    path.write_text(json.dumps(report, indent=2))
    return path


def draw(plot: Any, study: optuna.Study, path: Path) -> str:
    """The plot saved as PNG ("written"), or why not."""
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as error:
            return f"not drawn: {error}"
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    if not isinstance(figure, Figure):
        return "not drawn: no figure"
    figure.set_size_inches(9, 5)
    figure.tight_layout()  # Optuna's plots leave long setting names cut at the left edge
    save_png(figure, path)
    return "written"
