"""Precision: `auto` is bf16 where the hardware multiplies bf16 fast (AMX CPUs, bf16 GPUs), fp32 elsewhere."""

import pytest

from utils.inference.precision import accelerate_mixed_precision, cpu_has_amx, resolve_precision


def fails():
    raise AssertionError("this capability should not be asked about")


@pytest.mark.parametrize("amx, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_amx(amx, expected):
    assert resolve_precision("auto", on_gpu=False, has_amx=lambda: amx, gpu_bf16=fails) == expected


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_gpu_follows_bf16_support(bf16, expected):
    assert resolve_precision("auto", on_gpu=True, has_amx=fails, gpu_bf16=lambda: bf16) == expected


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("on_gpu", [True, False])
def test_an_explicit_precision_is_kept(requested, on_gpu):
    assert resolve_precision(requested, on_gpu=on_gpu, has_amx=fails, gpu_bf16=fails) == requested


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int4")


def test_amx_is_read_from_cpu_flags(tmp_path):
    with_amx = tmp_path / "with"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_amx(with_amx) is True
    assert cpu_has_amx(without) is False
    assert cpu_has_amx(tmp_path / "missing") is False


def test_accelerate_names():
    assert [accelerate_mixed_precision(p) for p in ("fp32", "bf16", "fp16")] == ["no", "bf16", "fp16"]


# --- serving in bf16: weights cast to bf16 and kept resident, scores compared with fp32 on real texts ------

# bf16 keeps 8 bits of mantissa: on these tiny checkpoints scores moved by ~1e-4 when measured; real MiniLM
# checkpoints move by up to ~1e-2 (docs/BENCHMARKS.md), hence the bound.
BF16_TOLERANCE = 0.02


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_bf16_scores_agree_with_fp32(task, multilabel_checkpoint, multiclass_checkpoint, toxic_csv, conference_csv):
    import numpy as np
    import pandas as pd

    from inferer import ModelInferer

    checkpoint = multilabel_checkpoint if task == "multilabel" else multiclass_checkpoint
    texts = (pd.read_csv(toxic_csv).comment_text if task == "multilabel"
             else pd.read_csv(conference_csv).Title).head(64).tolist()
    fp32 = ModelInferer(checkpoint, precision="fp32")
    bf16 = ModelInferer(checkpoint, precision="bf16")
    assert bf16.precision == "bf16" and str(next(bf16.model.parameters()).dtype) == "torch.bfloat16"
    difference = np.abs(bf16.score_batch(texts)[0] - fp32.score_batch(texts)[0])
    assert difference.max() <= BF16_TOLERANCE


def test_predict_and_eval_honour_precision(multilabel_checkpoint, toxic_csv, tmp_path, capsys):
    import json

    import main

    args = ["--mode", "predict", "--checkpoint", str(multilabel_checkpoint), "--text", "you are kind"]
    assert main.main([*args, "--precision", "fp32"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert main.main([*args, "--precision", "bf16"]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    for label, score in fp32["scores"].items():
        assert abs(bf16["scores"][label] - score) <= BF16_TOLERANCE
    assert main.main(["--mode", "eval", "--checkpoint", str(multilabel_checkpoint), "--test-data", str(toxic_csv),
                      "--text-column", "comment_text", "--precision", "bf16", "--output-dir", str(tmp_path)]) == 0
    assert "bf16" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval_report_bf16.json").read_text())
    assert report["precision"] == "bf16"


def test_serving_defaults_to_auto(multilabel_checkpoint, monkeypatch):
    from conftest import set_environment

    from app import create_app
    from inferer import ModelInferer
    from serving.settings import ServingSettings

    set_environment(monkeypatch, {"CHECKPOINT_PATH": str(multilabel_checkpoint)})
    settings = ServingSettings.from_env()
    assert settings.precision == "auto"
    app = create_app(settings=settings)
    machine_choice = resolve_precision("auto", on_gpu=False)
    assert app.test_client().get("/metadata").get_json()["precision"] == machine_choice
    assert ModelInferer(multilabel_checkpoint).precision == machine_choice


def test_a_bf16_trained_checkpoint_is_float32_and_loads_anywhere(tiny_bert, toxic_csv, tmp_path):
    """Trained in its own process: Accelerate fixes the mixed precision once per process."""
    import json
    import subprocess
    import sys

    import torch
    from conftest import TOXIC_LABELS
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from inferer import ModelInferer

    subprocess.run([sys.executable, "main.py", "--task", "multilabel", "--data", str(toxic_csv),
                    "--text-column", "comment_text", "--label-columns", ",".join(TOXIC_LABELS),
                    "--model-name-or-path", str(tiny_bert), "--pooling", "cls", "--max-train-samples", "64",
                    "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--precision", "bf16",
                    "--test-split", "0.2", "--blend", "none", "--no-temperature-scaling",
                    "--no-export-onnx",  # the checkpoint's weights are what is tested; export has its own tests
                    "--output-dir", str(tmp_path)], check=True, capture_output=True)
    checkpoint = tmp_path / "checkpoint"
    assert json.loads((checkpoint / "classifier.json").read_text())["precision"] == "bf16"
    assert {tensor.dtype for tensor in load_file(checkpoint / "model.safetensors").values()} == {torch.float32}
    plain = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    inferer = ModelInferer(checkpoint, precision="fp32", backend="torch")
    batch = inferer.tokenizer(["you are kind", "go away, idiot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        plain_scores = torch.sigmoid(plain(**batch).logits).numpy()
    assert abs(inferer.score_batch(["you are kind", "go away, idiot"])[0] - plain_scores).max() < 1e-5
