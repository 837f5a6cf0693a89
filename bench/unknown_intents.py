"""Unknown intents: an intent file with some of its intents held out, to measure "none of these" on requests of
intents the model never saw (docs/RESULTS.md "None of these").

    python bench/unknown_intents.py --output-dir outputs/unknown_intents --held-out 0.25
    python main.py --data outputs/unknown_intents/train.csv --validation-data outputs/unknown_intents/val.csv \\
        --test-data outputs/unknown_intents/test.csv --output-dir outputs/unknown_intents/run

writes, seeded, `train.csv` and `val.csv` with the known intents' rows only, and `test.csv` with the known intents'
test rows plus the held-out intents' test rows labelled `oos` (which evaluation counts as the rows that should be
answered "none of these"). The default source is CLINC150's in-scope files: its `oos_` requests are left out, so
the unknown requests here are real intents, closer to one another than CLINC's out-of-scope set.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLINC = ROOT.parent / "shared" / "data" / "clinc150"
NONE_LABEL = "oos"


def read_rows(path: Path, text_column: str, label_column: str) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [(row[text_column], row[label_column]) for row in csv.DictReader(handle)]


def write_rows(path: Path, rows: list[tuple[str, str]], text_column: str, label_column: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([text_column, label_column])
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--train", type=Path, default=CLINC / "train.csv")
    parser.add_argument("--validation", type=Path, default=CLINC / "val.csv")
    parser.add_argument("--test", type=Path, default=CLINC / "test.csv")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="intent")
    parser.add_argument("--held-out", type=float, default=0.25, help="Share of the intents held out as unknown.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    columns = (args.text_column, args.label_column)
    train, validation, test = (read_rows(path, *columns) for path in (args.train, args.validation, args.test))
    intents = sorted({label for _, label in train})
    if NONE_LABEL in intents or not 0 < args.held_out < 1:
        parser.error(f"the source must not hold '{NONE_LABEL}' rows, and --held-out must lie in (0, 1)")
    count = max(1, round(args.held_out * len(intents)))
    unknown = set(np.random.default_rng(args.seed).choice(intents, size=count, replace=False).tolist())
    write_rows(args.output_dir / "train.csv", [r for r in train if r[1] not in unknown], *columns)
    write_rows(args.output_dir / "val.csv", [r for r in validation if r[1] not in unknown], *columns)
    write_rows(args.output_dir / "test.csv", [(text, NONE_LABEL if label in unknown else label)
                                              for text, label in test], *columns)
    summary = {"intents": len(intents), "unknown_intents": sorted(unknown), "seed": args.seed,
               "test_rows_unknown": sum(label in unknown for _, label in test)}
    (args.output_dir / "unknown_intents.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(intents) - count} known and {count} unknown intents; {summary['test_rows_unknown']} test rows of "
          f"unknown intents labelled '{NONE_LABEL}', in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
