"""Shared fixtures: real data rows, small randomly initialised backbones with real tokenizers, and
checkpoints trained by the real training loop on them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from filelock import FileLock
from tokenizers import ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizerFast,
)
from transformers.utils import logging as hf_logging

import train
from models import default_backbone_path
from utils.config import make_config
from utils.data.datasets import SHARED_DATA_DIR

hf_logging.set_verbosity_error()
# the label lists of the real rows the fixtures read, for every test to import
TOXIC_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
CONFERENCES = ["INFOCOM", "ISCAS", "SIGGRAPH", "VLDB", "WWW"]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test`: a process per CPU), each process and the servers and trainings it starts
    get their share of the cores: several OpenMP pools spinning on the same cores run many times slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """What `build(folder)` returns, built once for the whole run: under pytest-xdist the first worker to ask builds
    it in the run's shared temporary folder under a file lock and the others wait and read it (pytest-xdist's
    documented pattern), so that no checkpoint is trained once per worker. Nothing may write into it afterwards."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: its own temporary folder
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed half way left
            folder.mkdir()
            done.write_text(str(build(folder).relative_to(folder)))
    return folder / done.read_text()


@pytest.fixture(scope="session")
def toxic_csv(tmp_path_factory) -> Path:
    """400 real Jigsaw rows, enough of every label for a stratified split."""
    def build(folder: Path) -> Path:
        frame = pd.read_csv(SHARED_DATA_DIR / "toxic" / "train.csv")
        rare = frame[(frame.threat == 1) | (frame.identity_hate == 1) | (frame.severe_toxic == 1)].head(60)
        rows = pd.concat([rare, frame.drop(rare.index).head(340)]).sample(frac=1.0, random_state=0)
        rows.to_csv(folder / "toxic_small.csv", index=False)
        return folder / "toxic_small.csv"

    return built_once(tmp_path_factory, "toxic_data", build)


@pytest.fixture(scope="session")
def conference_csv(tmp_path_factory) -> Path:
    """300 real paper titles, stratified by conference."""
    def build(folder: Path) -> Path:
        frame = pd.read_csv(SHARED_DATA_DIR / "conference" / "title_conference.csv")
        rows = frame.groupby("Conference").head(60)
        rows.sample(frac=1.0, random_state=0).to_csv(folder / "conference_small.csv", index=False)
        return folder / "conference_small.csv"

    return built_once(tmp_path_factory, "conference_data", build)


@pytest.fixture(scope="session")
def clinc_csv(tmp_path_factory) -> Path:
    """750 real CLINC150 requests, 5 of each of its 150 intents: every intent in each split."""
    def build(folder: Path) -> Path:
        frame = pd.read_csv(SHARED_DATA_DIR / "clinc150" / "train.csv").groupby("intent").head(5)
        frame.sample(frac=1.0, random_state=0).to_csv(folder / "clinc150_small.csv", index=False)
        return folder / "clinc150_small.csv"

    return built_once(tmp_path_factory, "clinc_data", build)


def set_environment(monkeypatch, environ: dict[str, str]) -> None:
    """Exactly `environ` as the serving variables of this process (ServingSettings reads the environment)."""
    from serving.settings import ServingSettings

    for name in [*ServingSettings.model_fields, "APP_APIKEY"]:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)


def api_client(monkeypatch, checkpoint: Path):
    """A test client of the API as gunicorn builds it (create_app from the environment), serving `checkpoint` with
    every other setting at its default (BACKEND=auto)."""
    from app import create_app

    set_environment(monkeypatch, {"CHECKPOINT_PATH": str(checkpoint)})
    return create_app().test_client()


def _tiny_sizes() -> dict:
    return {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT with random weights and the real MiniLM WordPiece tokenizer."""
    def build(folder: Path) -> Path:
        tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **_tiny_sizes())
                  ).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return built_once(tmp_path_factory, "tiny_bert", build)


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> Path:
    def build(folder: Path) -> Path:
        tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
        DistilBertModel(DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2,
                                         hidden_dim=64, max_position_embeddings=128)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return built_once(tmp_path_factory, "tiny_distilbert", build)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, toxic_csv, conference_csv) -> Path:
    """A 2-layer RoBERTa with a byte-level BPE tokenizer trained here on the test rows."""
    def build(folder: Path) -> Path:
        texts = (pd.read_csv(toxic_csv).comment_text.tolist() + pd.read_csv(conference_csv).Title.tolist())
        bpe = ByteLevelBPETokenizer()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=2, special_tokens=specials)
        bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
        tokenizer = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                         cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
        tokenizer.save_pretrained(folder)
        config = RobertaConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=130, pad_token_id=1,
                               bos_token_id=0, eos_token_id=2, **_tiny_sizes())
        RobertaModel(config).save_pretrained(folder)
        return folder

    return built_once(tmp_path_factory, "tiny_roberta", build)


def train_tiny(output_dir: Path, backbone: Path, model_type: str, task: str, data: Path, **overrides):
    """Train a tiny model for a few steps through the real loop; returns train.TrainResult."""
    layout = ({"text_column": "comment_text", "label_columns": TOXIC_LABELS} if task == "multilabel"
              else {"text_column": "Title", "label_column": "Conference"})
    settings = {"task": task, "data": str(data), "model_type": model_type,
                "model_name_or_path": str(backbone), "output_dir": str(output_dir), "epochs": 1.0,
                "batch_size": 16, "max_length": 64, "learning_rate": 1e-3, "test_split": 0.2,
                "val_split": 0.2, "pooling": "cls", "freeze_embeddings": False, "freeze_layers": 0,
                "blend": "none", "temperature_scaling": False, "long_texts": "truncate", "reject_rate": 0.0, **layout,
                **overrides}
    return train.run(make_config(**settings))


@pytest.fixture(scope="session")
def multilabel_checkpoint(tmp_path_factory, tiny_bert, toxic_csv) -> Path:
    """A tiny BERT trained on real toxic rows (stock [CLS] head)."""
    return built_once(tmp_path_factory, "ml_run",
                      lambda folder: train_tiny(folder, tiny_bert, "bert", "multilabel", toxic_csv).checkpoint)


@pytest.fixture(scope="session")
def multiclass_checkpoint(tmp_path_factory, tiny_bert, conference_csv) -> Path:
    """A tiny BERT trained on real conference titles (stock [CLS] head)."""
    return built_once(tmp_path_factory, "mc_run",
                      lambda folder: train_tiny(folder, tiny_bert, "bert", "multiclass", conference_csv).checkpoint)


CLINC_LAYOUT = {"text_column": "text", "label_column": "intent"}


@pytest.fixture(scope="session")
def clinc_checkpoint(tmp_path_factory, tiny_bert, clinc_csv) -> Path:
    """A tiny BERT blended with its TF-IDF member on 150 intents (the TF-IDF member carries it: a few steps teach
    the transformer nothing), for what a report and the page look like at many classes."""
    return built_once(tmp_path_factory, "clinc_run", lambda folder: train_tiny(
        folder, tiny_bert, "bert", "multiclass", clinc_csv, blend="lexical", **CLINC_LAYOUT).checkpoint)


@pytest.fixture(scope="session")
def exported_checkpoint(tmp_path_factory, multilabel_checkpoint) -> Path:
    """A copy of the multi-label checkpoint with every ONNX graph (static int8 too) and their measurement on its
    validation rows (variants.json), as `main.py --mode export --onnx-static-int8` leaves it."""
    import export

    def build(folder: Path) -> Path:
        shutil.copytree(multilabel_checkpoint, folder / "checkpoint")
        export.run(folder / "checkpoint", static_int8=True)
        return folder / "checkpoint"

    return built_once(tmp_path_factory, "exported", build)


@pytest.fixture(scope="session")
def blend_checkpoint(tmp_path_factory, tiny_bert, toxic_csv) -> Path:
    """A tiny BERT trained on real toxic rows with its TF-IDF member beside it (`--blend lexical`: a logit blend, a
    weight per label); no ONNX graph."""
    return built_once(tmp_path_factory, "blend_run", lambda folder: train_tiny(
        folder, tiny_bert, "bert", "multilabel", toxic_csv, blend="lexical").checkpoint)


@pytest.fixture(scope="session")
def blend_multiclass_checkpoint(tmp_path_factory, tiny_bert, conference_csv) -> Path:
    """The same on conference titles (a probability blend)."""
    return built_once(tmp_path_factory, "blend_mc_run", lambda folder: train_tiny(
        folder, tiny_bert, "bert", "multiclass", conference_csv, blend="lexical").checkpoint)


@pytest.fixture(scope="session")
def exported_blend_checkpoint(tmp_path_factory, blend_checkpoint) -> Path:
    """A copy of the blended checkpoint, exported and measured like the above."""
    import export

    def build(folder: Path) -> Path:
        shutil.copytree(blend_checkpoint, folder / "checkpoint")
        export.run(folder / "checkpoint")
        return folder / "checkpoint"

    return built_once(tmp_path_factory, "exported_blend", build)


@pytest.fixture(scope="session")
def minilm_head(tmp_path_factory, toxic_csv) -> Path:
    """The shipped MiniLM, its encoder frozen and a head trained on the 400 real rows: a model whose words matter
    and that tells insults (validation ROC AUC about 0.9) in a few minutes of CPU. Read in torch: no graph."""
    return built_once(tmp_path_factory, "minilm_head", lambda folder: train_tiny(
        folder, default_backbone_path(), "bert", "multilabel", toxic_csv, pooling="mean", freeze_encoder=True,
        learning_rate=0.01, epochs=3.0, batch_size=32, export_onnx=False).checkpoint)


@pytest.fixture(scope="session")
def tiny_trainer():
    """The `train_tiny` function, for tests that train their own variant."""
    return train_tiny
