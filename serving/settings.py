"""Settings of the HTTP API, read from environment variables by pydantic-settings.

No torch import here: gunicorn.conf.py reads these before any worker starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from utils.inference.backends import AUTO, BACKENDS
from utils.machine import available_cores

# The WSGI environ key the worker (serving/worker.py) sets on requests that came in on METRICS_PORT.
METRICS_LISTENER = "classifier.metrics_listener"
RECEIVED_AT = "classifier.received_at"  # environ: time.monotonic() when the worker had the whole request
Backend = Literal["auto", "torch", "onnx", "onnx-int8", "onnx-fused", "onnx-fused-int8", "onnx-fused-int8-static"]
assert Backend.__args__ == (AUTO, *BACKENDS)  # noqa: S101 (one list of backends: the runners')


class ServingSettings(BaseSettings):
    """One field per environment variable: the upper-cased field name (APP_APIKEY for `api_key`)."""

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, case_sensitive=False, extra="ignore",
                                      populate_by_name=True)

    checkpoint_path: str | None = Field(None, description="Checkpoint folder written by training.")
    quantize: bool = Field(False, description="Dynamic int8 Linear layers (torch backend; CPU).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto (bf16 on AMX CPUs and bf16 GPUs, fp32 elsewhere); ignored when quantized.")
    backend: Backend = Field(
        "auto", description="auto: the fastest exported graph whose measured validation cost is within bounds, "
        "else torch (QUANTIZE or a PRECISION other than auto/fp32 mean torch); or torch, onnx, onnx-int8, "
        "onnx-fused, onnx-fused-int8, onnx-fused-int8-static (main.py --mode export).")
    max_body_bytes: PositiveInt = Field(1 << 20, description="Largest request body; larger gets 413.")
    max_texts: PositiveInt = Field(64, description="Most texts in one request; more gets 413.")
    max_chars: PositiveInt = Field(20_000, description="Most characters in one text; more gets 413.")
    max_explain_texts: PositiveInt = Field(
        8, description="Most texts in one /explain request (each costs a forward pass per word); more gets 413.")
    max_tokens: PositiveInt = Field(
        16_384, description="Most tokens in one /predict request, counted as read (cut, or every window of a long "
        "text); more gets 413.")
    max_request_cost: PositiveInt = Field(
        30_000, description="Most work in one request, in tokens through the model (/explain: about a forward pass "
        "per word); more gets 413. 30,000 is about 9 s of one core of an AMD EPYC with all-MiniLM-L6-v2.")
    torch_threads: PositiveInt = Field(
        1, description="Intra-op threads per worker process (torch or ONNX Runtime).")
    workers: PositiveInt | None = Field(None, description="Worker processes; default cores // threads.")
    threads: PositiveInt | None = Field(
        None, description="Request threads per worker; default 4, or 32 with MICROBATCH (requests to batch).")
    request_timeout: PositiveFloat = Field(
        30.0, description="Seconds a /predict or /explain request may take in the app; work not done by then is "
        "abandoned before the next forward pass and answered 503 with Retry-After.")
    microbatch: bool = Field(False, description="Concurrent requests share one forward pass per worker.")
    microbatch_wait_ms: NonNegativeInt = Field(5, description="How long a first request waits for others.")
    microbatch_max_size: PositiveInt = Field(64, description="Most texts in one shared forward pass.")
    microbatch_queue_size: PositiveInt = Field(128, description="Most requests waiting per worker; then 503.")
    explain_queue_size: PositiveInt | None = Field(
        None, description="Most /explain requests per worker, the running one included; one more gets 503 with "
        "Retry-After. Below THREADS, so that /predict always has a thread; default 2, or 1 with 2 threads.")
    rate_limit: PositiveInt | None = Field(
        None, description="Most /predict and /explain requests a minute per client and per worker process (a "
        "token bucket: a minute's worth at once, then one every 60 / RATE_LIMIT s); one more gets 429 with "
        "Retry-After. Unset: no limit.")
    rate_limit_by: Literal["key", "address"] = Field(
        "key", description="Who a client is for RATE_LIMIT: key (the API key when APP_APIKEY is set, so every "
        "holder of the one key shares one allowance; else the address) or address (the connection's address).")
    header_timeout: PositiveFloat = Field(
        10.0, description="Seconds a client has to send a request's line and headers; then 408 and closed.")
    body_timeout: PositiveFloat = Field(
        30.0, description="Seconds a client has to send a request's body once its headers are in; then 408.")
    max_connections: PositiveInt = Field(
        1000, description="Open connections per worker; more wait in the listen queue until one closes.")
    max_buffered_bytes: PositiveInt = Field(
        64 << 20, description="Bytes of request bodies one worker holds before the app answers them; then 503.")
    host: str = Field("0.0.0.0", description="Interface gunicorn binds to.")
    port: PositiveInt = Field(8080, description="Port gunicorn binds to.")
    metrics_port: PositiveInt | None = Field(
        None, description="Also listen on this port, for GET /metrics and /health only and without the API key.")
    api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("app_apikey", "api_key"),
                                      description="When set, every route but /health needs it.")

    corrections_file: str | None = Field(
        None, description="JSONL file the page's label corrections are appended to (one JSON object a line, the "
        "form --extra-data reads), created if missing. Unset: the page offers no corrections and POST /corrections "
        "answers 404.")
    corrections_max_bytes: PositiveInt = Field(
        64 << 20, description="Largest CORRECTIONS_FILE; a correction that would take it past is refused with 507.")

    @field_validator("api_key")
    @classmethod
    def _printable_ascii(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not (value.get_secret_value().isascii() and value.get_secret_value().isprintable()):
            raise ValueError("must be printable ASCII (e.g. python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")
        return value

    @field_validator("explain_queue_size")
    @classmethod
    def _below_threads(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        threads = info.data.get("threads") or default_threads(bool(info.data.get("microbatch")))
        if 1 < threads <= value:
            raise ValueError(f"must be below THREADS ({threads}): explanations waiting would hold every thread")
        return value

    @field_validator("metrics_port")
    @classmethod
    def _port_of_its_own(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value == info.data.get("port"):
            raise ValueError("must differ from PORT: that port serves /metrics only")
        return value

    @classmethod
    def from_env(cls) -> ServingSettings:
        """The settings of this process's environment; a wrong value is a ValueError naming its variable."""
        try:
            return cls()
        except ValidationError as error:
            problems = "; ".join(f"{env_name(str(e['loc'][0]))}: {e['msg']}"
                                 + ("" if env_name(str(e["loc"][0])) == "APP_APIKEY" else f", got {e['input']!r}")
                                 for e in error.errors(include_url=False))
            raise ValueError(f"bad serving settings: {problems}") from None

    @property
    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    def worker_count(self, cores: int | None = None) -> int:
        """Workers so that workers x torch threads stays within the cores."""
        if self.workers is not None:
            return self.workers
        return max(1, (cores or available_cores()) // self.torch_threads)

    def thread_count(self) -> int:
        """gunicorn threads per worker: with micro-batching, enough for concurrent requests to meet in a batch."""
        return self.threads or default_threads(self.microbatch)

    @property
    def device(self) -> str:
        """Where the workers run the model: the CPU (workers x TORCH_THREADS fill its cores)."""
        return "cpu"

    def explain_places(self) -> int:
        """Explanations one worker holds at once, running or waiting (EXPLAIN_QUEUE_SIZE)."""
        return self.explain_queue_size or max(1, min(2, self.thread_count() - 1))

    def describe(self) -> str:
        """One line per setting, the API key masked."""
        lines = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "api_key":
                value = "set" if value else "not set (API open)"
            lines.append(f"  {env_name(name):<22} {value}")
        return "serving settings:\n" + "\n".join(lines)


def default_threads(microbatch: bool) -> int:
    """gunicorn threads per worker unless THREADS says: 4, or 32 with micro-batching."""
    return 32 if microbatch else 4


def env_name(field_name: str) -> str:
    """The environment variable of a setting."""
    return "APP_APIKEY" if field_name in ("api_key", "app_apikey") else field_name.upper()
