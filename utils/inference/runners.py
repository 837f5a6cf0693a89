"""Running a checkpoint's encoder on padded batches: one small interface, one runner per backend.

`torch` runs the safetensors weights (float32, bf16, or dynamic int8 Linear layers); the `onnx*` backends run
the graphs `main.py --mode export` wrote (plain or fused, float32 or int8), in ONNX Runtime. Each imports its
engine only when built, so an environment without torch can serve an exported checkpoint. Which backend runs is
chosen in utils/inference/backends.py. The dynamic int8 backends quantize a batch's activations with one scale
per tensor, so a text's scores would move with its neighbours and its padding (by up to 0.25 on a trained model,
docs/SERVING.md): they score each text alone, unpadded (`TextByText`), and a text's scores are its own. A host
whose threads share one model (the server) wraps the runner and the TF-IDF member through `Sharing`
(ModelInferer.shared).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from utils.checkpoint.contract import CheckpointFolder
from utils.checkpoint.errors import MissingFileError
from utils.inference.backends import BACKENDS
from utils.inference.tokens import pad_batch, sorted_batches
from utils.machine import available_cores

LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, attention_mask) -> (N, labels) logits


class Runner(Protocol):
    """Turns one padded batch into logits (float32, one row per text)."""

    device: str
    precision: str
    quantized: bool

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class LexicalScorer(Protocol):
    """The TF-IDF member as inference uses it (models/lexical.py `LexicalModel`)."""

    def scores(self, texts: list[str]) -> np.ndarray: ...

    def occlusion_scores(self, text: str, spans: list[tuple[int, int]]) -> np.ndarray: ...


class Sharing(Protocol):
    """How a host shares one loaded model between its threads (serving/scheduling.py `ModelTurns`): the runner
    and the TF-IDF member that every forward pass and every member scoring go through."""

    def share_runner(self, runner: Runner) -> Runner: ...

    def share_lexical(self, lexical: LexicalScorer) -> LexicalScorer: ...


class TorchRunner:
    """The classifier in PyTorch; `quantize` swaps its Linear layers for dynamic int8 ones (CPU only)."""

    def __init__(self, folder: CheckpointFolder, device: str | None, quantize: bool, precision: str,
                 num_threads: int | None) -> None:
        try:
            import torch
        except ImportError as error:  # the ONNX serving image
            raise ImportError("the torch backend needs torch (requirements_inference.txt); without it, serve an "
                              "exported graph: BACKEND=auto or one of the onnx backends") from error

        from models import load_classifier
        from utils.inference.precision import DTYPES, resolve_precision

        if num_threads:
            torch.set_num_threads(num_threads)
        # int8 dynamic quantization has CPU kernels only, so quantize picks the CPU unless told otherwise
        self.device = device or ("cuda" if torch.cuda.is_available() and not quantize else "cpu")
        self.quantized = quantize
        self.precision = "fp32" if quantize else resolve_precision(precision, on_gpu=self.device.startswith("cuda"))
        model = load_classifier(folder.path).eval()
        if quantize:
            if self.device != "cpu":
                raise ValueError("dynamic int8 quantization runs on the CPU only")
            with warnings.catch_warnings():  # torch announces the move of quantization to torchao, at length
                warnings.filterwarnings("ignore", message=".*deprecated")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif self.precision in DTYPES:
            model = model.to(DTYPES[self.precision])
        self.model = model.to(self.device)
        self._torch = torch

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            output = self.model(input_ids=torch.from_numpy(input_ids).to(self.device),
                                attention_mask=torch.from_numpy(attention_mask).to(self.device))
        return output.logits.float().cpu().numpy()


class OnnxRunner:
    """An exported graph in ONNX Runtime on the CPU (float32 inputs and outputs, int8 inside for the int8 ones)."""

    device = "cpu"
    precision = "fp32"

    def __init__(self, folder: CheckpointFolder, backend: str, num_threads: int | None) -> None:
        path = folder.onnx_file(backend)
        if not path.is_file():
            raise MissingFileError(f"{path} is missing: export it with `python main.py --mode export "
                                   f"--checkpoint {folder.path}`")
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("the ONNX backends need onnxruntime: pip install -r requirements_onnx.txt") from error
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.session: Any = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.quantized = "int8" in backend

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return np.asarray(self.session.run(["logits"], feeds)[0], dtype=np.float32)


class TextByText:
    """A runner whose batch is each text alone, its padding trimmed: for the dynamic int8 backends, whose
    activation scales would otherwise be the whole padded batch's. Padding is on the right (`pad_batch`).
    With `parallel` > 1, that many texts run at once on threads of their own (an ONNX Runtime session runs
    concurrent calls; each text alone is too small to share out between cores). Measured on a 2-core AMD EPYC Zen 4,
    1,911 windows of 64 tokens: 269 a second against 156 with both cores on one text at a time; the same scores."""

    def __init__(self, runner: Runner, parallel: int = 1) -> None:
        self.runner, self.parallel = runner, parallel
        self.device, self.precision, self.quantized = runner.device, runner.precision, runner.quantized
        self.model = getattr(runner, "model", None)  # torch's, for the gradient explanations
        self._pool: ThreadPoolExecutor | None = None

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        lengths = attention_mask.sum(axis=1)

        def one(row: int) -> np.ndarray:
            length = lengths[row]
            return self.runner.logits(input_ids[row:row + 1, :length], attention_mask[row:row + 1, :length])

        if self.parallel == 1 or len(lengths) == 1:
            return np.vstack([one(row) for row in range(len(lengths))])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="text-by-text")
        return np.vstack(list(self._pool.map(one, range(len(lengths)))))


def score_sequences(logits_fn: LogitsFn, sequences: Sequence[Sequence[int] | np.ndarray], pad_id: int,
                    batch_size: int = 64) -> np.ndarray:
    """Logits (N, labels) of token sequences of any lengths, in input order, batched by length."""
    rows: dict[int, np.ndarray] = {}
    for batch in sorted_batches([len(s) for s in sequences], batch_size):
        input_ids, attention_mask = pad_batch([list(sequences[i]) for i in batch], pad_id)
        rows.update(zip(batch, logits_fn(input_ids, attention_mask), strict=True))
    return np.stack([rows[i] for i in range(len(sequences))])


DYNAMIC_INT8 = ("onnx-int8", "onnx-fused-int8")  # backends whose activation scales are computed per call


def build_runner(folder: CheckpointFolder, backend: str = "torch", device: str | None = None,
                 quantize: bool = False, precision: str = "auto", num_threads: int | None = None) -> Runner:
    """The runner for `backend`; the ONNX ones run the exported graph as it is (CPU, no quantize, fp32)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        runner = TorchRunner(folder, device, quantize, precision, num_threads)
        return TextByText(runner) if quantize else runner
    if quantize or precision not in ("auto", "fp32"):
        raise ValueError(f"backend {backend!r} runs the exported graph as it is: no quantize, precision fp32")
    if device not in (None, "cpu"):
        raise ValueError("the ONNX backends run on the CPU only")
    if backend in DYNAMIC_INT8:  # texts alone, side by side: one core each
        return TextByText(OnnxRunner(folder, backend, 1), parallel=num_threads or available_cores())
    return OnnxRunner(folder, backend, num_threads)

