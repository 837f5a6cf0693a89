"""What to label next: the rows of a pool of unlabelled texts whose labels would teach the checkpoint most, written as
a CSV ready to label that training reads back with `--extra-data`.

    python main.py --mode suggest --checkpoint DIR --pool unlabelled.csv --k 200 --output to_label.csv
    python main.py --data train.csv --extra-data to_label.csv        # once its label columns are filled in

Rows already labelled (in the checkpoint's training data, or in --data, --validation-data, --test-data and
--extra-data) and repeated texts are never suggested; the picks are ranked by docs/RESULTS.md's measured default
(utils/evaluation/acquisition.py).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from inferer import ModelInferer
from utils.checkpoint.atomic import staged_file
from utils.checkpoint.errors import UserError
from utils.config import Config, DataArguments, config_from_saved
from utils.data.pool import Pool, label_header, labelled_texts, pool_text_column, read_pool, training_layout
from utils.evaluation.acquisition import DEFAULT_STRATEGY, STRATEGIES, choose, disagreement, priority, uncertainty
from utils.inference.blend import Scored

DEFAULT_OUTPUT = "suggestions.csv"  # in --output-dir when no --output is given
HINT_SCORES = 3  # the best-scoring labels shown beside each row
CHUNK_FACTOR = 16  # texts scored per call: this many forward-pass batches (sorted by length inside)


@dataclass(frozen=True)
class Ranked:
    """A pool ranked: the positions picked (best first) and every text's scores and parts of its priority."""

    picks: list[int]
    scored: Scored
    uncertainty: np.ndarray
    disagreement: np.ndarray


def run(config: Config, checkpoint: str | Path) -> Path:
    """`--mode suggest`: read the pool, leave out what is labelled, rank the rest, write the --k best to label."""
    if not config.pool:
        raise UserError("--mode suggest needs --pool FILE (the unlabelled texts to choose from)")
    target = output_path(config)
    inferer = ModelInferer(checkpoint, quantize=config.quantize, precision=config.precision, backend=config.backend,
                           **config.reading_overrides())
    saved = config_from_saved(inferer.checkpoint.training_config())
    layout = training_layout(saved)
    pool_path = Path(config.pool)
    column = pool_text_column(pool_path, config, [inferer.info.text_column, layout and layout.text_column, "text"])
    pool = read_pool(pool_path, config, column)
    labelled, notes = labelled_texts(labelled_sources(config, saved), inferer.task)
    positions = pool.unlabelled(labelled)
    for note in notes:
        print(note, file=sys.stderr)
    print(f"{pool_path}: {len(pool.texts)} rows, {len(positions)} distinct texts not yet labelled to choose from "
          f"({len(labelled)} labelled texts known)", file=sys.stderr)
    if not positions:
        raise UserError(f"{pool_path}: every text is already labelled or repeated; nothing to suggest")
    ranked = rank(inferer, [pool.texts[p] for p in positions], config.k, config.seed, config.eval_batch_size)
    header = label_header(layout)
    frame = suggestion_frame(pool, [positions[p] for p in ranked.picks], ranked, inferer, header)
    with staged_file(target, "suggestions") as partial:
        frame.to_csv(partial, index=False, encoding="utf-8")
    print(f"wrote {len(frame)} rows to label to {target}: {how_to_label(header, inferer.task)}; then train with "
          f"--extra-data {target}", file=sys.stderr)
    return target


def output_path(config: Config) -> Path:
    """--output (a .csv, not the pool itself), else suggestions.csv in --output-dir."""
    target = Path(config.output) if config.output else Path(config.output_dir) / DEFAULT_OUTPUT
    if target.suffix.lower() != ".csv":
        raise UserError(f"{target}: suggestions are written as a .csv file (--output)")
    if config.pool and target.resolve() == Path(config.pool).resolve():
        raise UserError(f"{target}: the output would overwrite the pool")
    return target


def labelled_sources(config: Config, saved: Config) -> list[DataArguments]:
    """The data whose texts are labelled already: the checkpoint's (as it was trained), and the files this command
    names, read in the checkpoint's layout."""
    given = {name: getattr(config, name) for name in ("validation_data", "test_data", "extra_data")
             if getattr(config, name)}
    if config.data and Path(config.data).is_file():
        given["data"] = config.data
    return [saved, dataclasses.replace(saved, **given)] if given else [saved]


def rank(inferer: ModelInferer, texts: list[str], k: int, seed: int, batch_size: int = 128,
         strategy: str = DEFAULT_STRATEGY, scored: Scored | None = None) -> Ranked:
    """The `k` texts to label first by `strategy` (utils/evaluation/acquisition.py), deterministic for `seed`;
    `scored`: the texts' scores by this inferer where they are known already."""
    scored = scored if scored is not None else score_pool(inferer, texts, batch_size)
    uncertain = uncertainty(inferer.task, scored.served, inferer.thresholds)
    apart = disagreement(inferer.task, scored.members)
    chosen = STRATEGIES[strategy]
    return Ranked(choose(chosen, priority(chosen, uncertain, apart), texts, k, seed), scored, uncertain, apart)


def score_pool(inferer: ModelInferer, texts: list[str], batch_size: int) -> Scored:
    """Every text scored by each member and served, in chunks of a few batches, with a progress bar."""
    chunk, parts = CHUNK_FACTOR * batch_size, []
    with tqdm(total=len(texts), unit=" texts", desc="score pool") as bar:
        for start in range(0, len(texts), chunk):
            parts.append(inferer.score_texts(texts[start:start + chunk], batch_size))
            bar.update(len(parts[-1].served))
    members = {name: np.concatenate([part.members[name] for part in parts]) for name in parts[0].members}
    return Scored(members, np.concatenate([part.served for part in parts]),
                  np.concatenate([part.evidence for part in parts]), [t for part in parts for t in part.truncated])


def suggestion_frame(pool: Pool, rows: list[int], ranked: Ranked, inferer: ModelInferer,
                     header: tuple[str, list[str], str | None]) -> pd.DataFrame:
    """The picked rows, best first: rank, their row in the pool, the text under the training data's text column,
    the label column(s) empty to fill in, the model's labels and best scores as hints, then the pool's columns."""
    text_column, label_columns, _ = header
    hints = hint_columns(ranked, inferer)
    added = ["rank", "pool_row", text_column, *label_columns, *hints]
    picked = pool.frame.iloc[rows].reset_index(drop=True)
    picked = picked.drop(columns=[c for c in picked.columns if c in added and c != pool.text_column])
    picked = picked.rename(columns={pool.text_column: text_column})
    front = pd.DataFrame({"rank": range(1, len(rows) + 1), "pool_row": [row + 1 for row in rows],
                          text_column: picked[text_column], **dict.fromkeys(label_columns, ""), **hints})
    return pd.concat([front, picked.drop(columns=[text_column])], axis=1)


def hint_columns(ranked: Ranked, inferer: ModelInferer) -> dict[str, list]:
    """What the model thinks of each pick now, to label faster (never to copy): its labels, its best scores, and
    the two parts of the pick's priority."""
    scored, picks = ranked.scored, ranked.picks
    answers = [inferer.rules.answer(scored.served[i], scored.truncated[i], None, scored.evidence[i]) for i in picks]
    best = [np.argsort(-scored.served[i], kind="stable")[:HINT_SCORES] for i in picks]
    return {"model_labels": ["|".join(answer["labels"]) for answer in answers],
            "model_scores": ["|".join(f"{inferer.label_names[j]}={scored.served[i][j]:.3f}" for j in order)
                             for i, order in zip(picks, best, strict=True)],
            "uncertainty": [round(float(ranked.uncertainty[i]), 4) for i in picks],
            "disagreement": [round(float(ranked.disagreement[i]), 4) for i in picks]}


def how_to_label(header: tuple[str, list[str], str | None], task: str) -> str:
    """What to write in the label column(s), in words."""
    _, columns, delimiter = header
    if len(columns) > 1:
        return f"fill {', '.join(columns)} with 0 or 1 on every row, and delete the rows you leave unlabelled"
    several = (f"several joined by {delimiter!r} or as a JSON array" if delimiter else "several as a JSON array")
    names = "one class name" if task == "multiclass" else f"label names ({several}; empty: none applies)"
    return f"fill {columns[0]} with {names}, and delete the rows you leave unlabelled"
