"""Long-document files built from the shared data, which has none: what the windows of docs/RESULTS.md are measured on.

    python bench/long_documents.py --output-dir outputs/long_documents

writes two sets, seeded, from rows no other set of them shares:

- `buried/`: toxic comments split by comment into `train.csv` (ordinary comments, to train on) and
  `test_short.csv`; `test_long.csv` holds documents of about 400 words of harmless test comments, half of them
  with one short toxic test comment buried at a random place between 20% and 80% of the words; a document's
  labels are the buried comment's. Cut to its first tokens, such a document hides its label.
- `topics/`: multi-label documents of 25-45 voice-assistant requests (CLINC150) each: the requests of one to three
  topic intents among 100, Zipf-distributed so that many topics have under 10 training documents, mixed with
  requests of 50 background intents that are no label; labels are the topic intents. Training documents draw
  on the CLINC training and validation requests, test documents on its test requests only.

These are constructions, not a substitute for real long documents: docs/RESULTS.md says so beside their figures.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TOXIC_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
BURIED_WORDS = 400  # harmless words around the buried comment
BURIED_MAX_WORDS = 40  # a buried toxic comment is short: a sentence or two
TOPIC_INTENTS, BACKGROUND_INTENTS = 100, 50
ZIPF_EXPONENT = 1.1


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def buried(output: Path, documents: int, rng: np.random.Generator) -> None:
    """Toxic comments to train on, ordinary test comments, and long test documents with one buried in each half."""
    rows = read_csv(DATA / "toxic" / "train.csv")
    test = rng.random(len(rows)) < 0.15
    header = ["id", "comment_text", *TOXIC_LABELS]

    def line(row: dict[str, str]) -> list[object]:
        return [row["id"], row["comment_text"], *(row[name] for name in TOXIC_LABELS)]

    write_csv(output / "train.csv", header, [line(r) for r, t in zip(rows, test, strict=True) if not t])
    test_rows = [r for r, t in zip(rows, test, strict=True) if t]
    write_csv(output / "test_short.csv", header, [line(r) for r in test_rows])
    harmless = [r["comment_text"].split() for r in test_rows
                if not any(r[name] == "1" for name in TOXIC_LABELS) and r["comment_text"].split()]
    toxic = [r for r in test_rows
             if any(r[name] == "1" for name in TOXIC_LABELS) and len(r["comment_text"].split()) <= BURIED_MAX_WORDS]
    long_rows: list[list[object]] = []
    for index in range(documents):
        words: list[str] = []
        while len(words) < BURIED_WORDS:
            words += harmless[int(rng.integers(len(harmless)))]
        labels = ["0"] * len(TOXIC_LABELS)
        if index % 2:
            comment = toxic[int(rng.integers(len(toxic)))]
            at = int(rng.integers(int(0.2 * len(words)), int(0.8 * len(words))))
            words = words[:at] + comment["comment_text"].split() + words[at:]
            labels = [comment[name] for name in TOXIC_LABELS]
        long_rows.append([f"long{index}", " ".join(words), *labels])
    write_csv(output / "test_long.csv", header, long_rows)


def topics(output: Path, train_documents: int, test_documents: int, rng: np.random.Generator) -> None:
    """Multi-label documents of intent requests: 1-3 Zipf-drawn topic intents each, among background requests."""
    clinc = DATA / "clinc150"
    pools = {"train": read_csv(clinc / "train.csv") + read_csv(clinc / "val.csv"), "test": read_csv(clinc / "test.csv")}
    intents = sorted({row["intent"] for row in pools["train"]})
    order = rng.permutation(len(intents))
    topic_names = [intents[i] for i in order[:TOPIC_INTENTS]]
    background = [intents[i] for i in order[TOPIC_INTENTS:TOPIC_INTENTS + BACKGROUND_INTENTS]]
    frequency = 1 / np.arange(1, TOPIC_INTENTS + 1) ** ZIPF_EXPONENT
    frequency /= frequency.sum()
    for split, count in (("train", train_documents), ("test", test_documents)):
        by_intent: dict[str, list[str]] = {}
        for row in pools[split]:
            by_intent.setdefault(row["intent"], []).append(row["text"])
        rows: list[list[object]] = []
        for _ in range(count):
            labels = sorted(set(rng.choice(TOPIC_INTENTS, size=rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]),
                                           p=frequency).tolist()))
            requests = [text for label in labels
                        for text in rng.choice(by_intent[topic_names[label]], size=int(rng.integers(2, 7)))]
            filler = int(rng.integers(25, 46)) - len(requests)
            requests += [str(rng.choice(by_intent[background[int(rng.integers(len(background)))]]))
                         for _ in range(max(0, filler))]
            rng.shuffle(requests)
            rows.append([". ".join(requests) + ".", ",".join(topic_names[label] for label in labels)])
        write_csv(output / f"{split}.csv", ["text", "labels"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Long-document files built from the shared data.")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "long_documents")
    parser.add_argument("--buried-documents", type=int, default=400, help="long toxic test documents")
    parser.add_argument("--train-documents", type=int, default=4000, help="topic training documents")
    parser.add_argument("--test-documents", type=int, default=1500, help="topic test documents")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: the shared data lies beside the project")
    buried(args.output_dir / "buried", args.buried_documents, np.random.default_rng(args.seed))
    topics(args.output_dir / "topics", args.train_documents, args.test_documents, np.random.default_rng(args.seed))
    print(f"written to {args.output_dir}")


if __name__ == "__main__":
    main()
