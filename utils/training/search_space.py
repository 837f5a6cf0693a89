"""The settings a search tries: a space around the recipe's choice for the data, the same in every process.

| setting | range |
|---|---|
| learning_rate | a third to three times --learning-rate, log scale |
| epochs | half to 1.5 times the recipe's epochs (times the share one trial's time affords), and the recipe's |
| max_length | half, once, 1.5 and twice the recipe's (multiples of 8, within the backbone's positions) |
| freeze_layers | 0 to half the encoder's layers (or the recipe's, when more) |
| layer_decay | 0.7 to 1.0 |
| blend | auto (the TF-IDF member where validation keeps it) or none |
| multi-class | label_smoothing 0 to 0.2; class_weights none or auto (balanced) |
| multi-label | loss bce or focal; pos_weight auto or none |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import optuna


@dataclass(frozen=True)
class SearchCentre:
    """What the space is centred on; stored in the study, so that every process draws from the same space."""

    task: str
    recipe: dict[str, Any]  # the recipe's values for the data (utils/training/recipe.py)
    learning_rate: float
    layer_decay: float
    class_weights: str
    pos_weight: str
    loss: str
    layers: int  # the encoder's
    position_limit: int  # the most tokens the backbone reads
    epoch_share: float  # of the recipe's epochs, what one trial's share of the search's time affords (at most 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def epoch_range(self) -> tuple[float, float]:
        epochs = float(self.recipe["epochs"])
        scaled = epochs * self.epoch_share
        return round(min(max(0.5, scaled / 2), epochs), 2), round(max(epochs, 1.5 * scaled), 2)

    def lengths(self) -> list[int]:
        length = int(self.recipe["max_length"])
        candidates = {length} | {min(self.position_limit, max(16, 8 * round(length * f / 8))) for f in (0.5, 1.5, 2)}
        return sorted(candidates)

    def recipe_settings(self) -> dict[str, Any]:
        """The recipe's own choice as a point of the space: the search's first trial, its baseline."""
        settings = {"learning_rate": self.learning_rate, "epochs": float(self.recipe["epochs"]),
                    "max_length": int(self.recipe["max_length"]),
                    "freeze_layers": int(self.recipe["freeze_layers"]), "layer_decay": self.layer_decay,
                    "blend": "auto"}
        if self.task == "multiclass":
            return settings | {"label_smoothing": float(self.recipe["label_smoothing"]),
                               "class_weights": self.class_weights}
        return settings | {"loss": self.loss, "pos_weight": self.pos_weight}


def suggest_settings(trial: optuna.Trial, centre: SearchCentre) -> dict[str, Any]:
    """One trial's settings, drawn by the study's sampler from the space around `centre`."""
    low, high = centre.epoch_range()
    settings = {
        "learning_rate": trial.suggest_float("learning_rate", centre.learning_rate / 3, centre.learning_rate * 3,
                                             log=True),
        "epochs": round(trial.suggest_float("epochs", low, high), 2),
        "max_length": trial.suggest_categorical("max_length", centre.lengths()),
        "freeze_layers": trial.suggest_int("freeze_layers", 0,
                                           max(int(centre.recipe["freeze_layers"]), centre.layers // 2)),
        "layer_decay": trial.suggest_float("layer_decay", 0.7, 1.0),
        "blend": trial.suggest_categorical("blend", ["auto", "none"]),
    }
    if centre.task == "multiclass":
        settings["label_smoothing"] = trial.suggest_float("label_smoothing", 0.0, 0.2)
        settings["class_weights"] = trial.suggest_categorical("class_weights", ["none", "auto"])
    else:
        settings["loss"] = trial.suggest_categorical("loss", ["bce", "focal"])
        settings["pos_weight"] = trial.suggest_categorical("pos_weight", ["auto", "none"])
    return settings
