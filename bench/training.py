"""Training speed and memory: this project's train.py against the Hugging Face Trainer set up like
transformers' run_classification.py (padding to max_length), fp32 and bf16 on both sides:

    python bench/training.py

Both fine-tune the shipped all-MiniLM-L6-v2 on the same toxic training rows for --steps optimizer steps
with the same batch size, learning rate and max length, each in a fresh process (its peak RSS is that
process's). samples/s is the steady state between the second and the last training forward pass (model
loading, tokenization and evaluation excluded on both sides). Validation mean ROC AUC after those steps is
measured on the same validation rows (comparable between the two sides at one precision; bf16 runs fewer
steps, --bf16-steps, to stay within minutes where bf16 is emulated). Prints a table, appends to
docs/results/bench_training.json and draws docs/bench_training.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/training.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.records import append_record, figure_path, machine, new_record, results_path, save_figure  # noqa: E402

RESULTS = results_path("bench_training.json")
PLOT = figure_path("bench_training.png")
RUNS = [("train.py", "fp32"), ("hf Trainer", "fp32"), ("train.py", "bf16"), ("hf Trainer", "bf16")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--bf16-steps", type=int, default=3, help="Fewer: bf16 is emulated (slow) without AMX.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--val-split", type=float, default=0.015, help="Validation rows (fraction of training).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="Precisions to compare (bf16 is emulated, and slow, without AMX).")
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.steps, args.bf16_steps) < 3:  # the steady state is timed from the second step to the last
        parser.error("--steps and --bf16-steps must be at least 3")
    return args


class StepClock:
    """Times every training-mode forward pass of the top-level classifier (a global forward pre-hook)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        torch.nn.modules.module.register_module_forward_pre_hook(self.hook)

    def hook(self, module: torch.nn.Module, args: Any) -> None:
        if module.training and type(module).__name__.endswith("SequenceClassification"):
            self.times.append(time.perf_counter())

    def samples_per_s(self, batch_size: int) -> float:
        return (len(self.times) - 2) * batch_size / (self.times[-1] - self.times[1])


def config_for(args, precision: str, output_dir: str):
    from utils.config import parse_config

    # the toxic settings the benchmark's figures were first measured with: 3 of 6 layers fixed, no member
    return parse_config(["--task", "multilabel", "--data", "toxic", "--max-train-samples",
                         str(args.steps * args.batch_size), "--epochs", "1", "--batch-size", str(args.batch_size),
                         "--learning-rate", str(args.learning_rate), "--max-length", str(args.max_length),
                         "--freeze-layers", "3", "--blend", "none", "--precision", precision,
                         "--val-split", str(args.val_split), "--output-dir", output_dir])


def run_ours(args, precision: str, output_dir: str) -> dict[str, Any]:
    import train

    clock = StepClock()
    result = train.run(config_for(args, precision, output_dir))
    return {"samples_per_s": clock.samples_per_s(args.batch_size), "steps": result.steps,
            "val_mean_roc_auc": result.best_metrics["mean_roc_auc"]}


def run_trainer(args, precision: str, output_dir: str) -> dict[str, Any]:
    """run_classification.py's recipe: AutoModelForSequenceClassification, pad_to_max_length, Trainer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from models import default_backbone_path
    from utils.data.prepare import prepare_splits
    from utils.evaluation.metrics import compute_metrics

    splits = prepare_splits(config_for(args, precision, output_dir))
    backbone = default_backbone_path()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=len(splits.label_names), problem_type="multi_label_classification")

    def dataset(data) -> list[dict[str, Any]]:
        encoded = tokenizer(data.texts, padding="max_length", truncation=True, max_length=args.max_length)
        return [{"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels.tolist()}
                for ids, mask, types, labels in zip(encoded["input_ids"], encoded["attention_mask"],
                                                    encoded["token_type_ids"], splits_labels(data), strict=True)]

    def splits_labels(data) -> np.ndarray:
        return data.labels.astype(np.float32)

    training_args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=args.learning_rate, max_steps=args.steps, bf16=precision == "bf16", use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no", seed=42,
        dataloader_num_workers=0, disable_tqdm=True)
    clock = StepClock()
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset(splits.train))
    trainer.train()
    logits = trainer.predict(dataset(splits.validation)).predictions
    scores = 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))
    metrics = compute_metrics("multilabel", splits.validation.labels, scores, splits.label_names,
                              np.full(len(splits.label_names), 0.5))
    return {"samples_per_s": clock.samples_per_s(args.batch_size), "steps": args.steps,
            "val_mean_roc_auc": metrics["mean_roc_auc"]}


def one_run(args) -> None:
    """A single side and precision, in this (fresh) process: prints one JSON line."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    side, precision = args.one
    with tempfile.TemporaryDirectory() as output_dir:
        result = (run_ours if side == "train.py" else run_trainer)(args, precision, output_dir)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    print(json.dumps({"side": side, "precision": precision, "peak_rss_mb": peak_mb, **result}))


def main() -> None:
    args = parse_args()
    if args.one:
        one_run(args)
        return
    rows = []
    common = ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
              "--learning-rate", str(args.learning_rate), "--val-split", str(args.val_split),
              "--threads", str(args.threads)]
    for side, precision in [(side, precision) for side, precision in RUNS if precision in args.precisions]:
        started = time.time()
        steps = args.bf16_steps if precision == "bf16" else args.steps
        done = subprocess.run([sys.executable, __file__, *common, "--steps", str(steps), "--one", side, precision],
                              cwd=ROOT,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{side} {precision} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1]) | {"wall_s": time.time() - started}
        print(f"  {side} {precision}: {row['samples_per_s']:.2f} samples/s", file=sys.stderr)
        rows.append(row)
    record = new_record(machine=machine(torch=torch.__version__),
                        steps={"fp32": args.steps, "bf16": args.bf16_steps}, batch_size=args.batch_size,
                        max_length=args.max_length, learning_rate=args.learning_rate, threads=args.threads,
                        rows=rows)
    print_table(record)
    append_record(RESULTS, record)
    plot(record)


def print_table(record: dict[str, Any]) -> None:
    print(f"\n{record['machine']['cpu']}, {record['threads']} threads, torch {record['machine']['torch']}; "
          f"{record['steps']['fp32']} fp32 / {record['steps']['bf16']} bf16 steps x batch {record['batch_size']}, "
          f"max_length {record['max_length']}, "
          f"lr {record['learning_rate']}\n")
    print("| side       | precision | samples/s | x HF Trainer | peak RSS MB | val mean ROC AUC | wall s |")
    print("|------------|-----------|-----------|--------------|-------------|------------------|--------|")
    trainer = {r["precision"]: r for r in record["rows"] if r["side"] == "hf Trainer"}
    for r in record["rows"]:
        ratio = r["samples_per_s"] / trainer[r["precision"]]["samples_per_s"]
        print(f"| {r['side']:<10} | {r['precision']:<9} | {r['samples_per_s']:9.2f} | {ratio:12.2f} | "
              f"{r['peak_rss_mb']:11.0f} | {r['val_mean_roc_auc']:16.4f} | {r['wall_s']:6.0f} |")


def plot(record: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    names = [f"{r['side']}\n{r['precision']}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [r["samples_per_s"] for r in rows], color="tab:blue")
    left.set_ylabel("training samples/s")
    right.bar(names, [r["peak_rss_mb"] for r in rows], color="tab:gray")
    right.set_ylabel("peak RSS (MB)")
    save_figure(fig, f"Fine-tuning MiniLM, batch {record['batch_size']}, max_length {record['max_length']} "
                f"({record['when']})", PLOT)


if __name__ == "__main__":
    main()
