"""Inference speed and quality of every serving variant of one checkpoint, against transformers' pipeline:

    python bench/inference.py --checkpoint outputs/bench_cls/checkpoint

Variants: ModelInferer fp32, bf16, dynamic int8 (torch), ONNX Runtime fp32 and int8 (exported here when
missing), and `pipeline("text-classification", top_k=None)` on the same folder (a --pooling cls checkpoint,
so the pipeline computes the same model). All at the same batch size, max length and thread count. Per
variant: texts/s scoring --texts held-out toxic texts in batches, single-text latency p50/p99, file size,
and mean ROC AUC / macro-F1 on those texts. Plus the machine's measured fp32/bf16 matmul GFLOP/s and the
fraction of it batch inference reaches. Prints a table, appends to docs/results/bench_inference.json and
draws docs/bench_inference.png.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/inference.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import export  # noqa: E402
from bench.records import append_record, figure_path, machine, new_record, results_path, save_figure  # noqa: E402
from eval import evaluate  # noqa: E402
from inferer import ModelInferer  # noqa: E402
from utils.checkpoint import CheckpointFolder  # noqa: E402
from utils.config import make_config  # noqa: E402
from utils.data.prepare import read_test_set  # noqa: E402
from utils.data.readers import LabeledTexts  # noqa: E402
from utils.evaluation.metrics import compute_metrics  # noqa: E402

RESULTS = results_path("bench_inference.json")
PLOT = figure_path("bench_inference.png")
VARIANTS = {  # name: ModelInferer arguments
    "torch fp32": {}, "torch bf16": {"precision": "bf16"}, "torch int8 (dynamic)": {"quantize": True},
    "onnx fp32": {"backend": "onnx"}, "onnx int8": {"backend": "onnx-int8"},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/bench_cls/checkpoint")
    parser.add_argument("--texts", type=int, default=512, help="Held-out toxic texts scored per variant.")
    parser.add_argument("--latency-texts", type=int, default=40, help="Texts sent one at a time per variant.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-pipeline", action="store_true")
    return parser.parse_args()


def machine_with_flags() -> dict[str, Any]:
    flags = Path("/proc/cpuinfo").read_text()
    return machine(avx512="avx512f" in flags, amx="amx_bf16" in flags, torch=torch.__version__)


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` size x size matrix products: the machine's practical peak for that dtype."""
    torch.mm(torch.ones(256, 256, dtype=dtype), torch.ones(256, 256, dtype=dtype))  # warm-up
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    best = min(timed(lambda: torch.mm(a, b))[1] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def timed(call) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def flops_per_text(inferer: ModelInferer, tokens: float) -> float:
    """2 x (weights in the encoder's matrix products) x tokens, plus attention's two T x T products per layer."""
    config = inferer.model.config
    encoder = inferer.model.base_model.encoder
    matmul_params = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    attention = 2 * 2 * config.num_hidden_layers * tokens**2 * config.hidden_size
    return 2 * matmul_params * tokens + attention


def latencies(predict_one, texts: list[str]) -> tuple[float, float]:
    predict_one(texts[0])
    times = [timed(lambda t=t: predict_one(t))[1] for t in texts]
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000)


def file_size_mb(inferer: ModelInferer, name: str, checkpoint: Path) -> float:
    if name.startswith("onnx"):
        return CheckpointFolder(checkpoint).onnx_file(inferer.backend).stat().st_size / 1e6
    if name == "pipeline":
        return (checkpoint / "model.safetensors").stat().st_size / 1e6
    buffer = io.BytesIO()  # what this variant's weights take when saved as they sit in memory
    torch.save(inferer.model.state_dict(), buffer)
    return buffer.tell() / 1e6


def quality(task: str, data: LabeledTexts, scores: np.ndarray, inferer: ModelInferer) -> dict[str, float]:
    metrics = compute_metrics(task, data.labels, scores, inferer.label_names, inferer.thresholds)
    return {"mean_roc_auc": metrics["mean_roc_auc"], "macro_f1": metrics["at_tuned"]["macro_f1"]}


def run_variant(name: str, checkpoint: Path, data: LabeledTexts, args) -> tuple[dict[str, Any], ModelInferer]:
    inferer = ModelInferer(checkpoint, device="cpu", num_threads=args.threads, **VARIANTS[name])
    inferer.score_batch(data.texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    result, seconds = timed(lambda: evaluate(inferer, data, batch_size=args.batch_size))
    p50, p99 = latencies(inferer.predict, data.texts[: args.latency_texts])
    row = {"variant": name, "texts_per_s": len(data) / seconds, "latency_p50_ms": p50, "latency_p99_ms": p99,
           "size_mb": file_size_mb(inferer, name, checkpoint),
           **quality(inferer.task, data, result["scores"], inferer)}
    return row, inferer


def run_pipeline(checkpoint: Path, data: LabeledTexts, reference: ModelInferer, args) -> dict[str, Any]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(checkpoint), top_k=None, device="cpu")
    options = {"batch_size": args.batch_size, "truncation": True, "max_length": reference.max_length}
    order = {name: i for i, name in enumerate(reference.label_names)}

    def scores_of(outputs) -> np.ndarray:
        table = np.zeros((len(outputs), len(order)))
        for row, labels in enumerate(outputs):
            for item in labels:
                table[row, order[item["label"]]] = item["score"]
        return table

    classify(data.texts[: args.batch_size], **options)
    outputs, seconds = timed(lambda: classify(data.texts, **options))
    p50, p99 = latencies(lambda text: classify(text, truncation=True, max_length=reference.max_length),
                         data.texts[: args.latency_texts])
    return {"variant": "transformers pipeline", "texts_per_s": len(data) / seconds, "latency_p50_ms": p50,
            "latency_p99_ms": p99, "size_mb": file_size_mb(reference, "pipeline", checkpoint),
            **quality(reference.task, data, scores_of(outputs), reference)}


def held_out_texts(checkpoint: Path, count: int) -> LabeledTexts:
    """The toxic test split (rows training never saw), first `count` rows of a seeded shuffle."""
    labels = CheckpointFolder(checkpoint).info.labels
    data = read_test_set(make_config(task="multilabel", data="toxic"), labels)
    return data.subset(np.random.default_rng(0).permutation(len(data))[:count])


def main() -> None:
    args = parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint)
    if not CheckpointFolder(checkpoint).onnx_file("onnx-int8").is_file():
        _, seconds = timed(lambda: export.export_onnx(checkpoint))
        print(f"exported ONNX in {seconds:.0f} s", file=sys.stderr)
    data = held_out_texts(checkpoint, args.texts)
    # bf16 without AMX or AVX-512 BF16 takes ~20 s per 2048 product here: one is enough to see it
    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16, repeats=1)}
    rows, inferers = [], {}
    for name in VARIANTS:
        row, inferers[name] = run_variant(name, checkpoint, data, args)
        rows.append(row)
        print(f"  {name}: {row['texts_per_s']:.1f} texts/s", file=sys.stderr)
    if not args.skip_pipeline:
        rows.append(run_pipeline(checkpoint, data, inferers["torch fp32"], args))
    fp32 = inferers["torch fp32"]
    lengths = fp32.tokenizer(data.texts, truncation=True, max_length=fp32.max_length)["input_ids"]
    tokens = float(np.mean([len(ids) for ids in lengths]))
    flops = flops_per_text(fp32, tokens)
    for row in rows:
        row["gflops"] = row["texts_per_s"] * flops / 1e9
        row["fraction_of_fp32_peak"] = row["gflops"] / peak["fp32"]
    record = new_record(machine=machine_with_flags(), checkpoint=str(checkpoint), texts=len(data),
                        threads=args.threads, batch_size=args.batch_size, max_length=fp32.max_length,
                        mean_tokens_per_text=tokens, gflop_per_text=flops / 1e9, matmul_gflops_2048=peak, rows=rows)
    print_table(record)
    append_record(RESULTS, record)
    plot(record)


def print_table(record: dict[str, Any]) -> None:
    base = next(r for r in record["rows"] if r["variant"] == "torch fp32")
    pipe = next((r for r in record["rows"] if r["variant"] == "transformers pipeline"), None)
    print(f"\n{record['machine']['cpu']}, {record['threads']} threads, torch {record['machine']['torch']}; "
          f"{record['texts']} texts, batch {record['batch_size']}, max_length {record['max_length']}, "
          f"{record['mean_tokens_per_text']:.0f} tokens/text, {record['gflop_per_text']:.2f} GFLOP/text")
    print(f"matmul 2048x2048: fp32 {record['matmul_gflops_2048']['fp32']:.1f} GFLOP/s, "
          f"bf16 {record['matmul_gflops_2048']['bf16']:.1f} GFLOP/s\n")
    header = (f"| {'variant':<22} | texts/s | x fp32 | x pipeline | p50 ms | p99 ms | size MB | ROC AUC | "
              f"macro-F1 | % fp32 peak |")
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for r in record["rows"]:
        vs_pipe = f"{r['texts_per_s'] / pipe['texts_per_s']:.2f}" if pipe else "-"
        print(f"| {r['variant']:<22} | {r['texts_per_s']:7.1f} | {r['texts_per_s'] / base['texts_per_s']:6.2f} | "
              f"{vs_pipe:>10} | {r['latency_p50_ms']:6.1f} | {r['latency_p99_ms']:6.1f} | {r['size_mb']:7.1f} | "
              f"{r['mean_roc_auc']:.4f} | {r['macro_f1']:8.4f} | {100 * r['fraction_of_fp32_peak']:10.1f}% |")


def plot(record: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["rows"]
    names = [r["variant"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(names, [r["texts_per_s"] for r in rows], color="tab:blue")
    left.set_xlabel(f"texts/s (batch {record['batch_size']}, {record['threads']} threads)")
    left.invert_yaxis()
    right.barh(names, [r["latency_p50_ms"] for r in rows], color="tab:orange", label="p50")
    right.barh(names, [r["latency_p99_ms"] - r["latency_p50_ms"] for r in rows],
               left=[r["latency_p50_ms"] for r in rows], color="tab:red", alpha=0.5, label="p99")
    right.set_xlabel("single-text latency (ms)")
    right.invert_yaxis()
    right.legend()
    save_figure(fig, f"Inference on {record['machine']['cpu']} ({record['when']})", PLOT)


if __name__ == "__main__":
    main()
