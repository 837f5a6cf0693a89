"""`transformer_fit = head`: the encoder kept as pretrained, the classifier's last linear layer fitted on what the
encoder makes of the training texts.

Every training text is read once (forward passes only, about a third of a training step each), each of its windows
a training example with the text's labels; the layer is then fitted on those vectors in full batches, its weight
decay chosen on validation, in seconds. The checkpoint is an ordinary one: every backend, ONNX and int8 included,
scores it as it scores a fine-tuned model, and a long text's windows are pooled per label as validation chose.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from utils.inference.runners import score_sequences

HEAD_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)  # L2 penalties tried on standardized vectors; validation keeps the best
LBFGS_ITERATIONS = 200
FEATURE_BATCH = 64


def head_layer(model: nn.Module, num_labels: int) -> nn.Linear:
    """The classifier's last linear layer: its input is what the head is fitted on."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not layers:
        raise ValueError(f"no linear layer with {num_labels} outputs in {type(model).__name__}")
    return layers[-1]


@torch.inference_mode()
def head_inputs(model: nn.Module, layer: nn.Linear, sequences: list[list[int]], pad_id: int,
                device: torch.device | str, progress: Callable[[int], object] | None = None) -> np.ndarray:
    """The vector `layer` receives for each token sequence (the model in eval mode: no dropout), batched by
    length as inference batches them."""
    captured: list[torch.Tensor] = []

    def vectors(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        captured.clear()
        model(input_ids=torch.from_numpy(input_ids).to(device),
              attention_mask=torch.from_numpy(attention_mask).to(device))
        if progress is not None:
            progress(len(input_ids))
        return captured[-1].reshape(len(input_ids), -1).float().cpu().numpy()

    hook = layer.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0]))
    model.eval()
    try:
        return score_sequences(vectors, sequences, pad_id, FEATURE_BATCH)
    finally:
        hook.remove()
        model.train()


def fit_linear(features: np.ndarray, targets: np.ndarray, loss_fn: nn.Module, decay: float,
               num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias of a linear layer from `features` (standardized inside, folded back out) minimising the
    training loss plus `decay` times the squared weights, by L-BFGS over the whole set."""
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    x = torch.from_numpy((features - mean) / scale)
    y = torch.from_numpy(targets.astype(np.float32 if targets.ndim == 2 else np.int64))  # multi-label: 0/1 rows
    linear = nn.Linear(features.shape[1], num_labels)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=LBFGS_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(linear(x), y) + decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight = linear.weight.detach().numpy() / scale
    bias = linear.bias.detach().numpy() - weight @ mean
    return weight.astype(np.float32), bias.astype(np.float32)


def set_head(layer: nn.Linear, weight: np.ndarray, bias: np.ndarray) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight).to(layer.weight.dtype))
        layer.bias.copy_(torch.from_numpy(bias).to(layer.bias.dtype))
