"""Config: defaults, the JSON/YAML file, flags over the file, type checks on every value, and settings that never
change after parsing (frozen), with what reading and the recipe decide returned as frozen objects of their own."""

import dataclasses
import json

import pytest

from utils.checkpoint.errors import UserError
from utils.config import (
    PARTS,
    Config,
    DataArguments,
    SettingsError,
    build_parser,
    config_from_saved,
    make_config,
    parse_config,
    read_config_file,
)


def test_defaults_pick_the_dataset_of_the_task():
    assert make_config().data == "toxic"
    assert make_config(task="multiclass").data == "conference"
    assert make_config(data="my.csv").data == "my.csv"


def test_every_field_is_a_flag():
    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in flags
    assert "--no-freeze-encoder" in flags  # booleans can be switched both ways


def test_each_setting_is_declared_once_by_its_job():
    declared = [f.name for part in PARTS for f in dataclasses.fields(part)]
    assert declared == [f.name for f in dataclasses.fields(Config)]  # Config is the parts, in the order of --help
    assert "text_column" in {f.name for f in dataclasses.fields(DataArguments)}


def test_help_lists_the_flags_under_their_job():
    parser = build_parser()
    headings = {group.title: {o for action in group._group_actions for o in action.option_strings}
                for group in parser._action_groups}
    assert [part._argument_group_name for part in PARTS] == [g.title for g in parser._action_groups][2:]
    assert {"--text-column", "--val-split"} <= headings["data"]
    assert {"--ray-address", "--num-actors"} <= headings["Ray"]
    assert {"--freeze-encoder", "--no-freeze-encoder"} <= headings["training"]  # the added switch sits beside it


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: multiclass\nbatch-size: 8\nlearning_rate: 3.0e-5\nepochs: 3\n"
                    "label_columns: [a, b]\nfreeze_encoder: true\n")
    config = parse_config(["--config", str(path), "--batch-size", "4", "--no-freeze-encoder"])
    assert config.task == "multiclass"
    assert config.batch_size == 4
    assert config.learning_rate == 3e-5
    assert config.epochs == 3.0 and isinstance(config.epochs, float)
    assert config.label_columns == ["a", "b"]
    assert config.freeze_encoder is False


def test_json_config_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"max_length": 64, "pooling": "cls"}))
    config = parse_config(["--config", str(path)])
    assert (config.max_length, config.pooling) == (64, "cls")


def test_label_columns_flag_splits_commas_and_repeats():
    config = parse_config(["--data", "x.csv", "--label-columns", "toxic, insult", "--label-columns", "threat"])
    assert config.label_columns == ["toxic", "insult", "threat"]


def test_config_file_sits_under_flags_and_unset_recipe_fields_stay_auto(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 1\nbatch_size: 7\n")
    config = parse_config(["--config", str(path), "--max-length", "16"])
    assert (config.batch_size, config.epochs, config.max_length) == (7, 1.0, 16)
    assert (config.freeze_layers, config.blend, config.label_smoothing, config.time_budget) == (
        None, "auto", None, None)  # the recipe chooses these at training time


def test_unknown_key_in_config_file_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("batch_size: 8\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match="learnig_rate"):
        read_config_file(path)


def test_config_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        read_config_file(path)


@pytest.mark.parametrize("values, message", [
    ({"batch_size": "32"}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"freeze_encoder": "yes"}, "freeze_encoder"),
    ({"pooling": "max"}, "--pooling"),
    ({"task": "regression"}, "--task"),
    ({"val_split": 1.0}, "--val-split"),
    ({"test_split": -0.1}, "--test-split"),
    ({"max_length": 4}, "--max-length"),
    ({"batch_size": 0}, "--batch-size"),
])
def test_bad_values_are_rejected(values, message):
    with pytest.raises(ValueError, match=message):
        make_config(**values)


def test_ints_become_floats_where_a_float_is_expected():
    config = make_config(learning_rate=0, val_split=0)
    assert config.learning_rate == 0.0 and isinstance(config.learning_rate, float)


def test_bad_flag_value_exits_through_argparse():
    with pytest.raises(SystemExit):
        parse_config(["--batch-size", "many"])


def test_to_dict_round_trips():
    config = make_config(task="multiclass", label_column="y", text_column="x", data="f.csv", epochs=0.5)
    assert make_config(**config.to_dict()) == config
    assert json.loads(json.dumps(config.to_dict()))["epochs"] == 0.5


def test_a_checkpoints_flat_saved_config_loads_from_any_version():
    """training_config.json is one flat mapping; training adds the resolved backbone, and an older version may
    have saved a setting that is gone: both are left out."""
    saved = make_config(task="multiclass", data="f.csv", label_column="y", epochs=2).to_dict()
    assert config_from_saved(saved | {"backbone": "/models/minilm", "retired_setting": 3}) == make_config(**saved)
    old = {"task": "multilabel", "mode": "train", "data": "toxic", "epochs": 1.5, "max_length": 64, "seed": 7,
           "precision": "fp32", "ensemble": "tfidf", "backbone": "x"}
    config = config_from_saved(old)
    assert (config.epochs, config.max_length, config.seed, config.blend) == (1.5, 64, 7, "lexical")  # renamed
    assert config.batch_size == 32  # what the old file did not name takes today's default


def test_the_shipped_toxic_recipe_sets_its_documented_fields():
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "configs" / "toxic_30min.yaml"
    config = parse_config(["--config", str(recipe)])
    assert (config.task, config.data, config.epochs, config.max_length) == ("multilabel", "toxic", 3.0, 64)
    assert config.freeze_layers == 0
    assert parse_config(["--config", str(recipe), "--epochs", "2"]).epochs == 2.0


@pytest.mark.parametrize("part", PARTS + (Config,), ids=lambda part: part.__name__)
def test_no_settings_object_can_be_written_to(part):
    settings = make_config() if part is Config else part()
    for f in dataclasses.fields(part):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, f.name, getattr(settings, f.name))
    assert isinstance(make_config(), part)  # a function needing one job's settings takes the part; Config is each


def test_what_reading_and_the_recipe_decide_are_frozen(conference_csv):
    from utils.data.prepare import DataLayout, prepare_splits
    from utils.training.recipe import Choices, Recipe

    config = make_config(data=str(conference_csv), test_split=0.0)
    layout = prepare_splits(config).layout
    assert layout == DataLayout("multiclass", "Title", (), "Conference", None) and config.task == "auto"
    recipe = Recipe(60.0, {"max_length": 64, "epochs": 2.0, "freeze_layers": 0, "blend": "none",
                           "label_smoothing": 0.1, "at_least_one_label": "no", "long_texts": "truncate",
                           "transformer_fit": "fine-tune"})
    assert recipe.choices == Choices(64, 2.0, 0, "none", 0.1, "no", "truncate", "fine-tune")
    for decided in (layout, recipe, recipe.choices):
        for f in dataclasses.fields(decided):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(decided, f.name, getattr(decided, f.name))


def test_the_blend_under_its_earlier_name_still_reads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("ensemble: tfidf\n")
    assert parse_config(["--config", str(path)]).blend == "lexical"
    assert make_config(ensemble="none").blend == "none"
    with pytest.raises(SettingsError, match="--blend"):
        make_config(blend="bag-of-words")


def test_a_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such config file"):
        parse_config(["--config", str(tmp_path / "absent.yaml")])
