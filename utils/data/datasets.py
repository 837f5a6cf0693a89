"""The built-in datasets: where their files are found or fetched, and how their columns are laid out."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from utils.checkpoint.atomic import sha256_file
from utils.checkpoint.errors import MissingFileError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR_ENV = "BERT_CLASSIFIER_DATA_DIR"
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"
DOWNLOAD_DIR = Path.home() / ".cache" / "bert-classifier"
# held out as the test set from a file without its own, built-in or the user's: a built-in dataset given by
# its path is split as by its name, so both give the same figures
DEFAULT_TEST_SPLIT = 0.15


@dataclass(frozen=True)
class BuiltinDataset:
    """One public dataset: its files (with sha256), its column layout and its own held-out data."""

    name: str
    task: str
    train_file: str
    sha256: dict[str, str]
    text_column: str
    label_columns: tuple[str, ...] = ()
    label_column: str | None = None
    label_delimiter: str | None = None
    labels_file: str | None = None
    column_names: tuple[str, ...] | None = None  # for files without a header row
    test_file: str | None = None
    test_split: float = 0.0
    url_base: str | None = None
    how_to_get: str = ""


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "toxic": BuiltinDataset(
        name="toxic", task="multilabel", train_file="toxic/train.csv",
        sha256={"toxic/train.csv": "fc1f53debe927ca9a3a2ff1c9e66f9f0b1b474ccea6c58f82e2692e489edf6b9"},
        text_column="comment_text",
        label_columns=("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"),
        test_split=DEFAULT_TEST_SPLIT,
        how_to_get="accept the rules of the Kaggle competition 'jigsaw-toxic-comment-classification-"
                   "challenge', download train.csv and place it as toxic/train.csv in a data folder"),
    "goemotions": BuiltinDataset(
        name="goemotions", task="multilabel", train_file="goemotions/train.tsv",
        sha256={"goemotions/train.tsv": "1c254a142be5c00e80d819b9ae1bbd36d94b2eeb8f4b1271846508d57e57d9c5",
                "goemotions/dev.tsv": "575489c079c9de1097062a01738f998590d6b7ead66dd1c9fd1d2ba01fd8bc62",
                "goemotions/emotions.txt": "45c3ef86782d2a4d7fedcd6d8c111aa0d0e94720689bd164fac94fefb4495a89"},
        text_column="text", label_column="labels", label_delimiter=",",
        labels_file="goemotions/emotions.txt", column_names=("text", "labels", "id"),
        test_file="goemotions/dev.tsv",
        url_base="https://raw.githubusercontent.com/google-research/google-research/master/goemotions/data/"),
    "conference": BuiltinDataset(
        name="conference", task="multiclass", train_file="conference/title_conference.csv",
        sha256={"conference/title_conference.csv":
                "f4070a4baad5e348bcbce661fbb6f659283497e59adbb16470898931f98c4c6f"},
        text_column="Title", label_column="Conference", test_split=DEFAULT_TEST_SPLIT,
        how_to_get="take data/title_conference.csv from the susanli2016/NLP-with-Python GitHub repository "
                   "and place it as conference/title_conference.csv in a data folder"),
}


def candidate_data_dirs(data_dir: str | None) -> list[Path]:
    """Where built-in datasets are looked for, in order."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs += [SHARED_DATA_DIR, DOWNLOAD_DIR]
    return dirs


def locate_file(dataset: BuiltinDataset, relative: str, data_dir: str | None) -> Path:
    """The path of one of a built-in dataset's files, downloading it (checksum verified) if needed."""
    for folder in candidate_data_dirs(data_dir):
        path = folder / relative
        if path.is_file():
            return path
    if dataset.url_base is None:
        searched = ", ".join(str(d) for d in candidate_data_dirs(data_dir))
        raise MissingFileError(f"dataset '{dataset.name}': {relative} is not in {searched}; "
                               f"{dataset.how_to_get}, then pass --data-dir or set ${DATA_DIR_ENV}")
    target = DOWNLOAD_DIR / relative
    download(dataset.url_base + Path(relative).name, target, dataset.sha256[relative])
    return target


def download(url: str, target: Path, sha256: str) -> None:
    """Fetch url into target through a temporary file; a wrong checksum leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        tmp.write(chunk)
                        bar.update(len(chunk))
        except Exception as error:
            tmp_path.unlink(missing_ok=True)
            raise RuntimeError(f"could not download {url}: {error}") from error
    actual = sha256_file(tmp_path)
    if actual != sha256:
        tmp_path.unlink()
        raise RuntimeError(f"{url}: sha256 {actual} does not match the expected {sha256}")
    shutil.move(tmp_path, target)
