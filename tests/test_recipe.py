"""The recipe: every unset setting chosen from the data and the time budget, flags kept, the choice explained and
saved, and a file unlike the shared ones trained end to end with no setting but its columns."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from models.scoring import chosen_labels
from utils.checkpoint.contract import LEXICAL, CheckpointFolder
from utils.config import make_config
from utils.data.datasets import SHARED_DATA_DIR
from utils.training.export_rows import MEASURED_SEQUENCES, MIN_MEASURED_ROWS
from utils.training.recipe import (
    MAX_BUDGET_MINUTES,
    MIN_BUDGET_MINUTES,
    DataShape,
    Recipe,
    StepCost,
    choose_recipe,
    default_budget_seconds,
    epoch_cap,
    measure_step_cost,
    padded_length,
    round_epochs,
    window_counts,
)

# a step of 32 texts: 0.15 s plus 25 us per padded token
COST = StepCost(32, (16, 64, 128), tuple(0.15 + 25e-6 * 32 * length for length in (16, 64, 128)), 0.7, 3)
AUTO = {"max_length": None, "epochs": None, "freeze_layers": None, "blend": "auto", "label_smoothing": None,
        "at_least_one_label": "auto", "transformer_fit": "auto"}


def shape(lengths, rows: int, task: str = "multiclass", unlabelled: int = 0) -> DataShape:
    return DataShape(task, rows, rows // 5, 10, tuple(int(v) for v in lengths), 512, unlabelled)


def test_short_texts_get_their_whole_length_and_many_epochs():
    lengths = np.random.default_rng(0).integers(6, 20, 5000)  # intents: about ten words
    recipe = choose_recipe(shape(lengths, 15000), COST, AUTO, 32, default_budget_seconds(15000), 60.0)
    values = recipe.values
    assert values["max_length"] == 32  # the 95th percentile (19 tokens) rounded up to 16
    assert values["freeze_layers"] == 0 and values["epochs"] >= 4  # short texts: passes are cheap
    assert values["blend"] == "lexical" and values["label_smoothing"] == 0.1
    planned = sum(recipe.planned_seconds.values())
    assert planned <= recipe.budget_seconds  # training, member and export fit the budget together


def test_long_texts_on_a_small_budget_are_cut_and_half_the_encoder_is_fixed():
    lengths = np.random.default_rng(1).integers(200, 900, 5000)  # news articles
    recipe = choose_recipe(shape(lengths, 8000, "multilabel"), COST, AUTO, 32, 120.0, 20.0)
    values = recipe.values
    assert values["max_length"] == 64  # halved from 512 towards two epochs, no lower than 64
    assert values["freeze_layers"] == 3 and values["label_smoothing"] == 0.0
    assert "cut from 512" in recipe.reasons["max_length"]
    # under one epoch of fine-tuning: the encoder kept, its head fitted on the texts read once, in as many
    # windows a text as the budget affords, within it
    assert values["epochs"] < 1 and values["transformer_fit"] == "head" and values["long_texts"] == "windows"
    assert recipe.head_windows is not None and 1 <= recipe.head_windows < 30
    assert "windows each at most" in recipe.reasons["transformer_fit"] or recipe.head_windows == 1
    assert sum(recipe.planned_seconds.values()) <= 120.0
    larger = choose_recipe(shape(lengths, 80000, "multilabel"), COST, AUTO, 32, 300.0, 20.0)
    assert larger.values["epochs"] < 1 and larger.values["transformer_fit"] == "fine-tune"  # 625 steps: enough
    assert "625 steps of fine-tuning" in larger.reasons["transformer_fit"]
    tuned = choose_recipe(shape(lengths, 8000, "multilabel"), COST, AUTO | {"epochs": 0.5}, 32, 120.0, 20.0)
    assert tuned.values["transformer_fit"] == "fine-tune" and tuned.head_windows is None  # epochs given: fine-tune
    asked = choose_recipe(shape(lengths, 8000, "multilabel"), COST, AUTO | {"transformer_fit": "head"}, 32, 1e4, 20.0)
    assert asked.values["transformer_fit"] == "head" and asked.reasons["transformer_fit"].startswith("given")
    assert asked.head_windows is not None and asked.head_windows > recipe.head_windows  # more budget, more read


def test_export_measures_fewer_rows_where_training_floor_passes_the_budget():
    """The head fit reads every training text once whatever the budget: where that and the member leave export
    too little, export measures its graphs on fewer validation rows (those of MIN_MEASURED_ROWS at least), and
    the recipe says so."""
    lengths = np.random.default_rng(1).integers(200, 900, 5000)
    roomy = choose_recipe(shape(lengths, 8000, "multilabel"), COST, AUTO, 32, 120.0, 20.0)
    assert roomy.export_sequences == MEASURED_SEQUENCES and "export measures" not in roomy.describe()
    tight = choose_recipe(shape(lengths, 8000, "multilabel"), COST, AUTO, 32, 120.0, 30.0)
    assert tight.values["transformer_fit"] == "head" and tight.export_sequences < MEASURED_SEQUENCES
    assert sum(tight.planned_seconds.values()) <= 120.0 + 0.5  # within the budget, rounding aside
    assert f"export measures its graphs on {tight.export_sequences} validation sequences" in tight.describe()
    squeezed = choose_recipe(shape(lengths, 8000, "multilabel"), COST, AUTO, 32, 120.0, 100.0)
    windows = window_counts(lengths, squeezed.values["max_length"]).mean()
    assert squeezed.export_sequences == math.ceil(MIN_MEASURED_ROWS * windows)  # the floor: the plan passes
    assert Recipe(**{**json.loads(json.dumps(asdict(tight)))}).export_sequences == tight.export_sequences


def test_given_settings_are_kept_and_nothing_is_measured_when_nothing_depends_on_speed():
    given = {"max_length": 48, "epochs": 1.5, "freeze_layers": 2, "blend": "none", "label_smoothing": 0.0,
             "at_least_one_label": "no", "long_texts": "windows", "transformer_fit": "fine-tune"}
    recipe = choose_recipe(shape([10] * 100, 1000), None, given, 32, 180.0, 0.0)
    assert recipe.values == given and set(recipe.reasons.values()) == {"given"}


def test_multilabel_data_where_every_row_has_a_label_never_answers_with_none():
    lengths = [12] * 100
    labelled = choose_recipe(shape(lengths, 1000, "multilabel"), None, AUTO, 32, 180.0, 0.0)
    some_empty = choose_recipe(shape(lengths, 1000, "multilabel", unlabelled=40), None, AUTO, 32, 180.0, 0.0)
    assert labelled.values["at_least_one_label"] == "yes" and some_empty.values["at_least_one_label"] == "no"
    assert "40 of 1000" in some_empty.reasons["at_least_one_label"]
    scores = np.array([[0.2, 0.4, 0.1], [0.9, 0.1, 0.7], [0.05, 0.01, 0.3]])
    thresholds = np.array([0.5, 0.5, 0.5])
    assert chosen_labels(scores, thresholds).tolist() == [[False, False, False], [True, False, True],
                                                          [False, False, False]]
    assert chosen_labels(scores, thresholds, at_least_one=True).tolist() == [
        [False, True, False], [True, False, True], [False, False, True]]


def test_the_choice_is_deterministic_and_epochs_sit_on_a_coarse_grid():
    lengths = np.random.default_rng(2).integers(10, 120, 3000)
    first = choose_recipe(shape(lengths, 6000), COST, AUTO, 32, 300.0, 20.0)
    again = choose_recipe(shape(lengths, 6000), COST, AUTO, 32, 300.0, 20.0)
    assert first.values == again.values
    assert [round_epochs(e) for e in (0.6, 1.3, 3.9, 7.7)] == [0.5, 1.0, 3.5, 7.0]


def test_batches_are_padded_as_the_length_grouped_sampler_pads_them():
    lengths = np.random.default_rng(3).integers(5, 51, 20_000)  # uniform 5..50 tokens, mean 27.5
    grouped = padded_length(lengths, 512, 32)
    assert 27.5 < grouped < 30  # sorted megabatches: a batch pads little beyond its own texts
    assert 14 < padded_length(lengths, 16, 32) <= 16  # cut at 16; only the shortest batches pad less
    random_batches = np.mean([lengths[np.random.default_rng(i).choice(20_000, 32)].max() for i in range(100)])
    assert random_batches > 48  # what padding random batches would cost


def test_budget_and_epoch_cap_grow_with_the_file_within_bounds():
    assert default_budget_seconds(100) == 60 * MIN_BUDGET_MINUTES
    assert default_budget_seconds(9_000) == 360.0
    assert default_budget_seconds(10**6) == 60 * MAX_BUDGET_MINUTES
    assert epoch_cap(5) == 30.0 and epoch_cap(50) == 20.0 and epoch_cap(500) == 10.0


def test_measuring_the_step_cost_leaves_the_model_as_it_was(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    ids = tokenizer(["a short text", "another one that is a little longer"])["input_ids"]
    cost = measure_step_cost(model, ids, tokenizer.pad_token_id, 8)
    assert cost.lengths == (16, 64, 128) and all(s > 0 for s in cost.seconds) and cost.batch_size == 8
    assert 0 < cost.frozen_share <= 1 and cost.frozen_layers == 1
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def long_document_jsonl(tmp_path_factory):
    """300 'documents' of 12 to 24 real paper titles each, labelled with the conferences they draw on (a list),
    with an id column: long texts, label lists, a layout none of the shared files has."""
    titles = pd.read_csv(SHARED_DATA_DIR / "conference" / "title_conference.csv")
    by_conference = {name: group.Title.tolist() for name, group in titles.groupby("Conference")}
    names = sorted(by_conference)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(300):
        chosen = sorted(rng.choice(names, size=int(rng.integers(1, 3)), replace=False).tolist())
        parts = [title for name in chosen
                 for title in rng.choice(by_conference[name], size=int(rng.integers(6, 12)), replace=False)]
        rng.shuffle(parts)
        rows.append({"doc_id": f"D{index:04d}", "body": ". ".join(parts), "venues": chosen})
    path = tmp_path_factory.mktemp("documents") / "documents.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_file_unlike_the_shared_ones_gets_a_recipe_and_a_blend_no_worse_than_its_member(
        tmp_path, tiny_bert, long_document_jsonl, capsys):
    import train

    config = make_config(task="multilabel", data=str(long_document_jsonl), text_column="body",
                         label_column="venues", test_split=0.2, model_name_or_path=str(tiny_bert),
                         output_dir=str(tmp_path), time_budget=0.5, learning_rate=1e-3, export_onnx=False)
    result = train.run(config)
    printed = capsys.readouterr().out
    assert "recipe (time budget 0.5 min" in printed
    saved = Recipe.load(tmp_path)
    assert saved is not None and saved.cost is not None
    assert saved.values["max_length"] in (64, 128)  # the texts run past the tiny backbone's 128 positions
    assert "95th percentile" in saved.reasons["max_length"] and saved.planned_seconds["export"] == 0.0
    assert sum(saved.planned_seconds.values()) <= 30.0 + 1.0  # within the budget, rounding aside
    assert saved.values["blend"] == "lexical" and config.max_length is None  # the settings stay as given
    recorded = CheckpointFolder(result.checkpoint).training_config()
    assert {name: recorded[name] for name in saved.values} == saved.values  # the choices, recorded as settings
    longer = json.loads((tmp_path / "data_report.json").read_text())["texts_longer_than_window"]
    assert longer["max_length"] == saved.values["max_length"] and longer["train"] > 0  # the report counts the cut
    folder = CheckpointFolder(result.checkpoint)
    assert folder.info.max_length == saved.values["max_length"]
    summary = folder.metrics()
    assert summary["recipe"]["values"] == saved.values
    members = summary["validation_members"]
    if LEXICAL in folder.info.members:  # the blend kept the member: it is at least as good as either alone
        assert result.best_metrics["mean_roc_auc"] >= members[LEXICAL]["mean_roc_auc"] - 0.005
    else:  # the member was left out: the transformer alone was best on validation
        assert members["transformer"]["mean_roc_auc"] >= members[LEXICAL]["mean_roc_auc"]
