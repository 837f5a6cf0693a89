"""Settings of the HTTP API, read from environment variables (no torch import: gunicorn.conf.py uses it)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("torch", "onnx", "onnx-int8")  # how ModelInferer runs a checkpoint; kept here, free of torch
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class ServingSettings:
    """One field per environment variable (upper-cased name, APP_APIKEY for `api_key`)."""

    checkpoint_path: str | None = field(default=None, metadata={"help": "Checkpoint folder written by training."})
    quantize: bool = field(default=False, metadata={"help": "Dynamic int8 Linear layers (CPU)."})
    precision: str = field(default="auto", metadata={
        "help": "auto (bf16 on AMX CPUs and bf16 GPUs, fp32 elsewhere), fp32, bf16 or fp16; ignored when quantized."})
    backend: str = field(default="torch", metadata={"help": "torch, or onnx / onnx-int8 (main.py --mode export)."})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest request body; larger gets 413."})
    max_texts: int = field(default=64, metadata={"help": "Most texts in one request; more gets 413."})
    max_chars: int = field(default=20_000, metadata={"help": "Most characters in one text; more gets 413."})
    torch_threads: int = field(default=1, metadata={"help": "torch intra-op threads per worker process."})
    workers: int | None = field(default=None, metadata={"help": "Worker processes; default cores // threads."})
    threads: int | None = field(default=None, metadata={
        "help": "Request threads per worker; default 4, or 32 with MICROBATCH (requests to batch together)."})
    microbatch: bool = field(default=False, metadata={
        "help": "Concurrent requests share one forward pass per worker (microbatch.py)."})
    microbatch_wait_ms: int = field(default=5, metadata={
        "help": "How long the first waiting request waits for others to join its batch."})
    microbatch_max_size: int = field(default=64, metadata={"help": "Most texts in one shared forward pass."})
    microbatch_queue_size: int = field(default=128, metadata={
        "help": "Most requests waiting per worker; more get 503 with Retry-After."})
    host: str = field(default="0.0.0.0", metadata={"help": "Interface gunicorn binds to."})
    port: int = field(default=8080, metadata={"help": "Port gunicorn binds to."})
    api_key: str | None = field(default=None, repr=False,
                                metadata={"help": "When set, every route but /health needs it."})

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"PRECISION must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"BACKEND must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("max_body_bytes", "max_texts", "max_chars", "torch_threads", "port", "microbatch_max_size",
                     "microbatch_queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{env_name(name)} must be a positive integer, got {getattr(self, name)}")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()):
            raise ValueError("APP_APIKEY must be printable ASCII (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")
        for name in ("workers", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{env_name(name)} must be a positive integer, got {getattr(self, name)}")
        if self.microbatch_wait_ms < 0:
            raise ValueError(f"MICROBATCH_WAIT_MS must be 0 or more, got {self.microbatch_wait_ms}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingSettings:
        """Settings from `environ` (default os.environ); unset or empty variables keep the defaults."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is None or (raw.strip() == "" and f.type != "bool"):
                continue
            values[f.name] = parse_value(env_name(f.name), raw.strip(), str(f.type))
        return cls(**values)

    def worker_count(self, cores: int | None = None) -> int:
        """Workers so that workers x torch threads stays within the cores."""
        if self.workers is not None:
            return self.workers
        return max(1, (cores or available_cores()) // self.torch_threads)

    def thread_count(self) -> int:
        """gunicorn threads per worker: with micro-batching, enough for concurrent requests to meet in a batch."""
        if self.threads is not None:
            return self.threads
        return 32 if self.microbatch else 4

    def describe(self) -> str:
        """One line per setting, the API key masked."""
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                value = "set" if value else "not set (API open)"
            lines.append(f"  {env_name(f.name):<15} {value}")
        return "serving settings:\n" + "\n".join(lines)


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity, capped by a container's cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def env_name(field_name: str) -> str:
    if field_name == "api_key":
        return "APP_APIKEY"
    return field_name.upper()


def parse_value(name: str, raw: str, annotation: str) -> bool | int | str:
    base = annotation.replace(" | None", "")
    if base == "bool":
        if raw.lower() in TRUE_WORDS:
            return True
        if raw.lower() in FALSE_WORDS:
            return False
        raise ValueError(f"{name} must be one of {', '.join(TRUE_WORDS + FALSE_WORDS[:-1])}, got {raw!r}")
    if base == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    return raw
