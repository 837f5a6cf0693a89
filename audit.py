"""`--mode audit`: the rows of --data whose given labels the models most doubt, ranked by cleanlab.

Every row is judged by probabilities from models that never saw it (5 folds, each scored by models fitted on the
other four): the TF-IDF member, and a logistic regression on the transformer's sentence vectors (the backbone read
once, frozen), averaged. Of the schemes measured on planted flips (docs/RESULTS.md, "Label audit"), this one ranked
them best, ahead of the transformer fine-tuned on each fold at several times the time. The transformer's pass is
planned within --time-budget (the recipe's default for this many rows otherwise): its texts are cut shorter when the
budget is short, and left out, with the member alone ranking, when even that would not fit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from models import default_backbone_path
from utils.config import Config
from utils.data.file_rows import FileRows, read_file_rows
from utils.data.readers import DataError
from utils.data.splits import stratified_folds
from utils.evaluation.audit_report import audit_records, audit_summary, write_audit
from utils.evaluation.label_issues import QUALITY_METHOD, LabelIssues, find_label_issues
from utils.inference.reading import Reading
from utils.training.out_of_fold import SentenceEncoder, head_out_of_fold, member_out_of_fold
from utils.training.recipe import COVERED_QUANTILE, default_budget_seconds, round_up

FOLDS = 5
MIN_VECTOR_LENGTH = 32  # tokens a window: below it the budget leaves the transformer out
RANKING_SECONDS = 5.0  # kept back from the budget for the heads, cleanlab and the files


@dataclass(frozen=True)
class VectorPlan:
    """How the transformer reads the texts for their sentence vectors, and what that was planned to take (None: the
    transformer is left out, `note` says why)."""

    reading: Reading | None
    planned_seconds: float
    note: str


MEMBER, TRANSFORMER = "TF-IDF member", "transformer's sentence vectors + logistic regression"


@dataclass(frozen=True)
class Audited:
    """An audit's outcome: the rows, each member's out-of-fold probabilities (what the bench compares), cleanlab's
    verdict on their average, and the summary the page shows."""

    rows: FileRows
    members: dict[str, np.ndarray]
    issues: LabelIssues
    summary: dict[str, Any]


def run(config: Config) -> Path:
    """Audit --data's labels into --output-dir (label_audit.csv, .jsonl, .html); returns the page."""
    audited = audit(config)
    summary = audited.summary
    paths = write_audit(Path(config.output_dir), summary, audit_records(audited.rows, audited.issues), config.k)
    print(f"label audit: {summary['flagged']} of {summary['rows']} rows flagged by cleanlab in "
          f"{summary['seconds']['total']:.0f} s; every row, most doubtful first: {', '.join(map(str, paths))}")
    return paths[-1]


def audit(config: Config) -> Audited:
    """Every row of --data scored out of fold by the members the budget affords, and ranked by cleanlab."""
    started = time.time()
    rows = read_file_rows(config)
    check_rows(rows)
    encoder = SentenceEncoder(config.model_name_or_path or default_backbone_path())
    lengths = [len(ids) for ids in encoder.tokenizer(rows.data.texts, truncation=False)["input_ids"]]
    budget = 60 * config.time_budget if config.time_budget is not None else default_budget_seconds(
        len(rows.data), float(np.mean(lengths)))
    print("\n".join(rows.notes) + f"\nlabel audit: {len(rows.data)} rows, {FOLDS} folds, within {budget / 60:.1f} min "
          "(--time-budget MINUTES to change)")
    fold_of = stratified_folds(rows.data.labels, FOLDS, config.seed)
    members = {MEMBER: member_out_of_fold(rows.task, rows.data, fold_of)}
    seconds = {"reading and member": round(time.time() - started, 1)}
    plan = plan_vectors(encoder, rows, config, lengths, budget, time.time() - started)
    print(plan.note)
    if plan.reading is not None:
        members[TRANSFORMER] = transformer_out_of_fold(encoder, rows, plan.reading, fold_of)
        seconds["transformer"] = round(time.time() - started - seconds["reading and member"], 1)
    issues = find_label_issues(rows.task, rows.data.labels, np.mean(list(members.values()), axis=0))
    seconds["total"] = round(time.time() - started, 1)
    how = {"members": list(members), "folds": FOLDS, "method": QUALITY_METHOD, "budget_seconds": round(budget, 1),
           "seconds": seconds, "note": plan.note}
    return Audited(rows, members, issues, audit_summary(rows, issues, how))


def check_rows(rows: FileRows) -> None:
    """Enough rows for the folds: every class of a multi-class file on two rows at least (each fold's models must
    know every class)."""
    data = rows.data
    if len(data) < 2 * FOLDS:
        raise DataError(f"{rows.path}: {len(data)} rows; an audit's {FOLDS}-fold cross-validation needs at least "
                        f"{2 * FOLDS}")
    if rows.task == "multiclass":
        counts = np.bincount(data.labels, minlength=len(data.label_names))
        rare = [f"{data.label_names[j]!r} ({counts[j]})" for j in np.flatnonzero(counts < 2)]
        if rare:
            raise DataError(f"{rows.path}: class(es) {', '.join(rare)} on fewer than 2 rows: an audit's models, "
                            "fitted without the row they judge, cannot know them (add rows or remove the class)")


def plan_vectors(encoder: SentenceEncoder, rows: FileRows, config: Config, lengths: list[int], budget: float,
                 spent: float) -> VectorPlan:
    """The reading whose pass fits what the budget leaves once `spent` seconds are gone: --max-length, else the
    length covering 95% of the texts, halved while the measured pass would not fit, down to MIN_VECTOR_LENGTH."""
    seconds_left = budget - spent - RANKING_SECONDS
    limit = int(min(encoder.tokenizer.model_max_length, getattr(encoder.model.config, "max_position_embeddings", 512)))
    length = config.max_length or min(limit, max(16, round_up(float(np.quantile(lengths, COVERED_QUANTILE)), 16)))
    long_texts = "windows" if config.long_texts == "windows" else "truncate"
    while seconds_left > 0:
        reading = Reading(length, config.truncation, long_texts, config.window_stride, config.max_windows or 64)
        encoded = encoder.encode(rows.data.texts[:2000], reading)
        tokens_per_text = sum(len(ids) for ids in encoded.input_ids) / encoded.texts
        planned = encoder.seconds_per_token(encoded) * tokens_per_text * len(rows.data)
        if planned <= seconds_left:
            return VectorPlan(reading, planned, f"the transformer reads {length} tokens a text ({long_texts}): its "
                              f"pass is planned at {planned:.0f} s of the {max(0.0, seconds_left):.0f} s left")
        if config.max_length or length // 2 < MIN_VECTOR_LENGTH:
            needed = math.ceil((spent + RANKING_SECONDS + planned) / 60)
            return VectorPlan(None, planned, f"the TF-IDF member alone ranks: the transformer's pass at {length} "
                              f"tokens would take about {planned:.0f} s, over the {max(0.0, seconds_left):.0f} s "
                              f"the budget leaves (--time-budget {needed} includes it)")
        length //= 2
    return VectorPlan(None, 0.0, f"the TF-IDF member alone ranks: the budget is spent ({spent:.0f} s of "
                      f"{budget:.0f}; --time-budget {math.ceil((spent + RANKING_SECONDS) / 60) + 1} leaves the "
                      "transformer time)")


def transformer_out_of_fold(encoder: SentenceEncoder, rows: FileRows, reading: Reading,
                            fold_of: np.ndarray) -> np.ndarray:
    """The sentence vectors of every row (one pass), then the logistic regression heads fold by fold."""
    encoded = encoder.encode(rows.data.texts, reading)
    with tqdm(total=sum(len(ids) for ids in encoded.input_ids), desc="transformer's sentence vectors",
              unit="token", unit_scale=True) as bar:
        vectors = encoder.vectors(encoded, bar.update)
    return head_out_of_fold(rows.task, vectors, rows.data.labels, fold_of)
