"""Labelled rows that come back (`--extra-data`: labelled suggestions, the page's corrections): added to the training
rows, their labels replacing those of a text already in the data, so that each text counts once."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from utils.data.readers import LabeledTexts

# The page's form of a row, whatever the training data's layout: {"text": "...", "labels": ["toxic", "insult"]}.
PLAIN_TEXT_COLUMN, PLAIN_LABELS_COLUMN = "text", "labels"


def text_key(text: str) -> str:
    """A text as rows are matched: surrounding spaces ignored (as the data report's duplicates are)."""
    return text.strip()


@dataclass
class ExtraRows:
    """What the extra files did to the data: rows added to training, texts whose labels they replaced (by split)."""

    files: list[str]
    rows_read: int = 0
    texts: int = 0  # distinct texts among those rows (the last row of a text read twice wins)
    added: int = 0
    replaced: dict[str, int] = field(default_factory=dict)

    def note(self) -> str:
        """One line for the data report."""
        where = ", ".join(f"{count} in {split}" for split, count in self.replaced.items() if count)
        texts = f" ({self.texts} texts)" if self.texts != self.rows_read else ""
        return (f"extra data ({', '.join(self.files)}): {self.rows_read} rows{texts}, {self.added} added to the "
                f"training rows, {sum(self.replaced.values())} replaced the labels of a text already present"
                + (f" ({where})" if where else "") + "; each text counts once, the extra file's labels win")

    def describe(self) -> dict[str, object]:
        return {"files": self.files, "rows_read": self.rows_read, "texts": self.texts, "added": self.added,
                "replaced": self.replaced}


def newest_rows(extras: list[LabeledTexts]) -> LabeledTexts:
    """The extra files' rows as one set, one row per text: a text read again (later in a file, or in a later file)
    keeps its last labels."""
    last: dict[str, tuple[int, int]] = {}
    for number, extra in enumerate(extras):
        for row, text in enumerate(extra.texts):
            last.pop(text_key(text), None)  # re-inserted: the order is that of each text's last reading
            last[text_key(text)] = (number, row)
    texts = [extras[number].texts[row] for number, row in last.values()]
    labels = np.stack([extras[number].labels[row] for number, row in last.values()]) if last else extras[0].labels[:0]
    return LabeledTexts(texts, labels, extras[0].label_names, ", ".join(e.source for e in extras))


def with_labels_replaced(data: LabeledTexts, newer: dict[str, np.ndarray]) -> tuple[LabeledTexts, set[str]]:
    """`data` with the labels of the texts in `newer` replaced (every occurrence), and the texts it replaced."""
    rows = [(row, text_key(text)) for row, text in enumerate(data.texts) if text_key(text) in newer]
    if not rows:
        return data, set()
    labels = data.labels.copy()
    for row, key in rows:
        labels[row] = newer[key]
    replaced = LabeledTexts(data.texts, labels, data.label_names, data.source, data.rows_read, data.dropped,
                            data.unseen_texts, data.unseen_labels)
    return replaced, {key for _, key in rows}


def merge_extra(train: LabeledTexts, held: dict[str, LabeledTexts], extra: LabeledTexts,
                report: ExtraRows) -> tuple[LabeledTexts, dict[str, LabeledTexts]]:
    """The training rows with the extra rows added, and the held-out splits; a text already in any split gets the
    extra row's labels where it is (a held-out text is not copied into training: it would be counted twice)."""
    newer = {text_key(text): labels for text, labels in zip(extra.texts, extra.labels, strict=True)}
    present: set[str] = set()
    train, replaced = with_labels_replaced(train, newer)
    report.replaced["train"] = len(replaced)
    present |= replaced
    for name in list(held):
        held[name], replaced = with_labels_replaced(held[name], newer)
        report.replaced[name] = len(replaced - present)
        present |= replaced
    new = [row for row, text in enumerate(extra.texts) if text_key(text) not in present]
    report.added = len(new)
    added = extra.subset(new)
    merged = LabeledTexts(train.texts + added.texts, np.concatenate([train.labels, added.labels]), train.label_names,
                          train.source, train.rows_read, train.dropped, train.unseen_texts, train.unseen_labels)
    return merged, held
