"""Command line: `python main.py --task multilabel|multiclass --mode train|eval|predict|export|search|audit|suggest`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from utils.checkpoint.errors import UserError
from utils.config import Config, ExportArguments, SettingsError, parse_config


def main(argv: list[str] | None = None) -> int:
    hf_logging.set_verbosity_error()
    try:
        config = parse_config(argv)
        if config.mode == "train":
            return train_then_evaluate(config)
        elif config.mode == "search":
            return search_study(config)
        elif config.mode == "audit":
            import audit

            audit.run(config)
        elif config.mode == "suggest":
            import suggest

            suggest.run(config, require_checkpoint(config))
        elif config.mode == "eval":
            import eval as evaluation

            evaluation.run(config, require_checkpoint(config))
        elif config.mode == "predict" and config.engine == "ray":  # files, globs or folders on a Ray cluster
            import predict_ray

            predict_ray.run(config, require_checkpoint(config))
        elif config.mode == "predict":
            import predict

            predict.run(config, require_checkpoint(config))
        else:  # export: the modes are checked when the config is parsed
            import export

            export.run(require_checkpoint(config), config.output, config.onnx_static_int8, reduce_range(config))
    except UserError as error:  # the user's to fix: one line; anything else is a bug and keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def search_study(config: Config) -> int:
    """--mode search; stopped by a signal, the trial under way fails and the same command goes on with the study."""
    import search
    import train

    try:
        search.run(config)
    except train.TrainingInterrupted as interrupted:
        print(f"search stopped by a signal: run the same command again to go on with the study in "
              f"{config.output_dir}", file=sys.stderr)
        return interrupted.exit_code
    return 0


def train_then_evaluate(config: Config) -> int:
    """--mode train: train, then (on the main process) export, evaluate on the test data and share."""
    import eval as evaluation
    import train
    from utils.training.tracking import record_evaluation

    if config.push_to_hub:  # a name, token or offline setting that cannot upload fails before training
        from utils.checkpoint.hub import check_push_target

        check_push_target(config.push_to_hub)
    try:
        result = train.run(config)
    except train.TrainingInterrupted as interrupted:
        print(interrupted, file=sys.stderr)
        return interrupted.exit_code
    if is_main_process() and result.checkpoint.is_dir():
        if config.export_onnx:  # first, so that the report measures the backend the server will choose
            export_after_training(result.checkpoint, config)
        report = evaluation.run(result.settings, result.checkpoint)  # the data read as training read it
        record_evaluation(result.settings, Path(config.output_dir), report)  # into training's tracked run
        share(result.checkpoint, report, config.push_to_hub)
    return 0


def reduce_range(settings: ExportArguments) -> bool | None:
    """--onnx-int8-reduce-range as export.run takes it: None lets export choose for the CPU."""
    return {"auto": None, "yes": True, "no": False}[settings.onnx_int8_reduce_range]


def export_after_training(checkpoint: Path, settings: ExportArguments) -> None:
    """The graphs serving prefers, measured on validation; skipped with a note where ONNX is not installed."""
    import export

    missing = export.missing_engines()
    if missing:
        print(f"not exporting ONNX graphs: {' and '.join(missing)} not installed (requirements_onnx.txt); "
              "--no-export-onnx silences this", file=sys.stderr)
        return
    export.run(checkpoint, static_int8=settings.onnx_static_int8, reduce_range=reduce_range(settings))


def share(checkpoint: Path, report: dict[str, Any], repo: str | None) -> None:
    """The model card again, with the test metrics; with --push-to-hub, the checkpoint uploaded."""
    from utils.checkpoint.model_card import write_model_card

    write_model_card(checkpoint, report, repo)
    if repo:
        from utils.checkpoint.hub import push_checkpoint

        print(f"checkpoint uploaded: {push_checkpoint(checkpoint, repo)}")


def is_main_process() -> bool:
    """False on the other ranks of a torchrun / accelerate launch run, which leave reporting to rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


def require_checkpoint(config: Config) -> str:
    if not config.checkpoint:
        raise SettingsError(f"--mode {config.mode} needs --checkpoint DIR (a folder written by training)")
    return config.checkpoint


if __name__ == "__main__":
    sys.exit(main())
