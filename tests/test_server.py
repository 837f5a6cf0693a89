"""The API as it is deployed, for both images: the Dockerfiles (Dockerfile: torch and ONNX Runtime; Dockerfile.onnx:
ONNX Runtime without torch), .dockerignore and gunicorn.conf.py read as files, then (marked slow) a real gunicorn
server started with the image's own command in an environment that holds only the image's requirements file,
from a folder that holds only what the image copies."""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import TOXIC_LABELS
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from inferer import ModelInferer
from utils.machine import available_cores

ROOT = Path(__file__).resolve().parent.parent
KEY = "server-test-key"
# The base layer that serving needs (docs/ARCHITECTURE.md): nothing of data reading, training or plotting.
PAGE_FILES = ("index.html", "app.css", "app.js", "favicon.svg")  # serving/static: the page at /
START_SECONDS = 240  # two workers importing torch at once on a 2-core machine, after a fresh install


@dataclass(frozen=True)
class Image:
    """One serving image: its Dockerfile, the requirements it installs, what it copies, and what it serves here."""

    dockerfile: Path
    requirements: Path
    venv: Path  # this test's environment of those requirements: cached, rebuilt when they change
    copied: tuple[str, ...]  # the sources it copies besides the requirements and the checkpoint


# Both images copy the same folders: the torch modules (models/classifiers.py, utils/inference/precision.py) are
# imported only when the torch backend is built, which the ONNX image never does.
COPIED = ("app.py", "gunicorn.conf.py", "inferer.py", "models", "serving", "serving/static", "utils/__init__.py",
          "utils/machine.py", "utils/checkpoint", "utils/inference")
IMAGES = {
    "torch": Image(ROOT / "Dockerfile", ROOT / "requirements_inference.txt", ROOT / ".venv-inference", COPIED),
    "onnx": Image(ROOT / "Dockerfile.onnx", ROOT / "requirements_serving_onnx.txt", ROOT / ".venv-serving-onnx",
                  COPIED),
}
each_image = pytest.mark.parametrize("image", IMAGES.values(), ids=list(IMAGES))
# What each image's real server serves (conftest fixtures): the torch image a checkpoint without graphs, the ONNX
# image exported ones, the transformer alone and blended with its TF-IDF member.
SERVED = [("torch", "multilabel_checkpoint"), ("onnx", "exported_checkpoint"), ("onnx", "exported_blend_checkpoint")]


def dockerfile_instructions(image: Image) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = image.dockerfile.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instruction_args(image: Image, name: str) -> list[str]:
    return [args for instruction, args in dockerfile_instructions(image) if instruction == name]


def served_sources(image: Image) -> list[str]:
    """What the Dockerfile copies from the build context, but for the requirements and the checkpoint."""
    sources = []
    for args in instruction_args(image, "COPY"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        sources += [p.rstrip("/") for p in parts[:-1] if p != image.requirements.name and "$" not in p]
    return sources


def server_command(image: Image = IMAGES["torch"]) -> list[str]:
    """The image's CMD (test_faults.py starts the torch image's)."""
    (cmd,) = instruction_args(image, "CMD")
    return json.loads(cmd)


# --- the files, read -----------------------------------------------------------------------------------------


@each_image
def test_dockerfile_builds_a_slim_non_root_image_that_serves_with_gunicorn(image):
    assert instruction_args(image, "FROM") == ["python:3.11-slim"]
    assert server_command(image) == ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
    assert sorted(served_sources(image)) == sorted(image.copied)
    for source in served_sources(image):
        assert (ROOT / source).exists(), source
    assert sorted(p.name for p in (ROOT / "serving" / "static").iterdir()) == sorted(PAGE_FILES)
    (user,) = instruction_args(image, "USER")
    assert user not in ("root", "0")
    assert instruction_args(image, "EXPOSE") == ["8080"]
    (healthcheck,) = instruction_args(image, "HEALTHCHECK")
    assert "/health" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    environment = " ".join(instruction_args(image, "ENV"))
    assert "CHECKPOINT_PATH=/model" in environment and "PORT=8080" in environment
    assert any(image.requirements.name in run for run in instruction_args(image, "RUN"))
    text = image.dockerfile.read_text()
    assert "APP_APIKEY" not in text and not any(".env" in copy for copy in instruction_args(image, "COPY"))
    assert "COPY ${CHECKPOINT_DIR}/ /model/" in text and "ARG CHECKPOINT_DIR=docker/model" in text


def test_the_onnx_image_installs_no_torch():
    pins = read_pins(IMAGES["onnx"].requirements)
    assert "onnxruntime" in pins and "tokenizers" in pins and "flask" in pins
    assert not {"torch", "onnx", "sympy", "networkx"} & set(pins)  # torch, and export's packages, stay out
    assert pins.items() <= read_pins(IMAGES["torch"].requirements).items() | {("onnxruntime", "1.32.0")}


def dockerignored(path: str) -> bool:
    """Whether `docker build` leaves `path` out: the last matching .dockerignore line decides, and a line that
    matches a folder leaves out everything below it."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_data_and_secrets_out_and_lets_the_served_files_in():
    for path in ("data/toxic/train.csv", "outputs/run/checkpoint/model.safetensors", ".venv/bin/python",
                 ".venv-inference/bin/python", ".venv-serving-onnx/bin/python",
                 "checkpoints/a/model.safetensors", ".env", "tests/test_app.py",
                 ".git/HEAD", "utils/__pycache__/data.cpython-311.pyc"):
        assert dockerignored(path), path
    for path in ("app.py", "inferer.py", "gunicorn.conf.py", "models/classifiers.py", "serving/settings.py",
                 "utils/inference/explain.py", *(f"serving/static/{name}" for name in PAGE_FILES),
                 "requirements_inference.txt",
                 "requirements_serving_onnx.txt", "docker/model/model.safetensors",
                 "docker/model/config.json", "docker/model/model.fused.int8.onnx"):
        assert not dockerignored(path), path


def test_serving_command_is_documented():
    docs = (ROOT / "docs" / "SERVING.md").read_text()
    assert 'gunicorn -c gunicorn.conf.py "app:create_app()"' in docs and "CHECKPOINT_PATH=" in docs


def load_gunicorn_config(environ: dict[str, str]) -> dict:
    saved = dict(os.environ)
    try:
        os.environ.update(environ)
        config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    config["on_exit"](None)  # removes the metrics folder it made
    return config


def test_gunicorn_config_fits_workers_and_threads_to_the_cores():
    config = load_gunicorn_config({"PORT": "9123", "TORCH_THREADS": "2"})
    assert config["bind"] == "0.0.0.0:9123"
    assert config["workers"] == max(1, available_cores() // 2)
    assert config["preload_app"] is False  # each worker loads the model after the fork
    assert config["graceful_timeout"] > 0 and config["timeout"] >= config["graceful_timeout"]
    assert config["accesslog"] == "-" and callable(config["post_fork"])
    assert load_gunicorn_config({"WORKERS": "3", "HOST": "127.0.0.1"})["workers"] == 3
    assert load_gunicorn_config({})["bind"] == "0.0.0.0:8080"


# --- a real server ---------------------------------------------------------------------------------------------


def read_pins(path: Path) -> dict[str, str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(name): version for name, version in
            (line.split("==") for line in lines if line)}


def inference_venv(image: Image) -> Path:
    """A virtual environment with the image's requirements file and nothing else (pip itself aside)."""
    # Other test runs in the same tree wait for one build instead of building over each other.
    tree = hashlib.sha256(bytes(image.venv)).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"venv-inference-{tree}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_inference_venv(image)


def build_inference_venv(image: Image) -> Path:
    key = hashlib.sha256(image.requirements.read_bytes() + sys.version.encode()).hexdigest()
    stamp = image.venv / ".requirements-sha256"
    if stamp.is_file() and stamp.read_text() == key:
        return image.venv
    shutil.rmtree(image.venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(image.venv)], check=True)
    python = str(image.venv / "bin" / "python")
    # --no-deps, then `pip check`: a dependency missing from the file fails here instead of being fetched.
    # --no-compile: three times faster on a slow disk; the first server start writes the bytecode it needs.
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                              "--disable-pip-version-check", "-r", str(image.requirements)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    stamp.write_text(key)
    return image.venv


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, parsed JSON or text body, headers) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body, answer_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, body, answer_headers = error.code, error.read(), error.headers
    if answer_headers.get_content_type() == "application/json":
        return status, json.loads(body), answer_headers
    return status, body.decode(), answer_headers


def wait_until_ready(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gunicorn exited with {process.returncode}:\n{log.read_text()[-4000:]}"
        try:
            if call(f"{base}/ready", headers={"X-API-Key": KEY})[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"no answer on /ready after {START_SECONDS} s:\n{log.read_text()[-4000:]}")


def image_site(image: Image, folder: Path) -> Path:
    """A copy of what the image's /app holds, and nothing else."""
    site = folder / "app"
    site.mkdir()
    for source in served_sources(image):
        (site / source).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy2
        copy(ROOT / source, site / source, **({"dirs_exist_ok": True} if (ROOT / source).is_dir() else {}))
    return site


@pytest.mark.slow
@pytest.mark.parametrize("image_name, fixture", SERVED, ids=["torch", "onnx", "onnx-blend"])
def test_real_server_from_the_image_environment(image_name, fixture, request, tmp_path):
    image, checkpoint = IMAGES[image_name], request.getfixturevalue(fixture)
    venv = inference_venv(image)
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True).stdout
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed)}
    pins = read_pins(image.requirements)
    for bootstrap in ("pip", "setuptools"):  # what `python -m venv` puts there itself, unless the file pins it
        if bootstrap not in pins:
            installed.pop(bootstrap, None)
    assert set(installed) == set(pins)
    assert all(installed[name].split("+")[0] == version for name, version in pins.items())

    site = image_site(image, tmp_path)
    shutil.copytree(checkpoint, tmp_path / "model")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "CHECKPOINT_PATH": str(tmp_path / "model"), "HOST": "127.0.0.1", "PORT": str(port),
           "APP_APIKEY": KEY, "MAX_TEXTS": "4", "MAX_BODY_BYTES": "65536", "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(server_command(image), cwd=site, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until_ready(base, process, log)
        served = exercise_server(base, checkpoint)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    output = log.read_text()
    assert returncode == 0, output[-4000:]
    assert "Shutting down: Master" in output and "Traceback" not in output, output[-4000:]
    assert output.count("serving settings:") == 1 and KEY not in output  # printed once, the key masked
    assert f"127.0.0.1:{port}" in output and '"POST /predict HTTP/1.1" 200' in output
    # BACKEND=auto: torch for a checkpoint without graphs; where there are, a graph measured within bounds
    choice = served["backend_choice"]
    assert choice["requested"] == "auto" and choice["backend"] == served["backend"]
    if image_name == "torch":
        assert served["backend"] == "torch"
    else:
        assert served["backend"].startswith("onnx") and choice["measured"]["cost"] <= choice["max_cost"]


@pytest.mark.slow
def test_the_onnx_environment_imports_the_app_without_torch(exported_checkpoint, tmp_path):
    """Nothing on the serving import path needs torch; unmeasured graphs are served in float32 there."""
    image = IMAGES["onnx"]
    python = str(inference_venv(image) / "bin" / "python")
    site = image_site(image, tmp_path)
    unmeasured = shutil.copytree(exported_checkpoint, tmp_path / "model",
                                 ignore=shutil.ignore_patterns("variants.json"))
    script = ("import importlib.util, sys, app, inferer\n"
              "from utils.checkpoint.contract import CheckpointFolder\n"
              "from utils.inference.backends import backend_for\n"
              "assert importlib.util.find_spec('torch') is None and 'torch' not in sys.modules\n"
              "print(backend_for(CheckpointFolder(sys.argv[1])).backend)")
    result = subprocess.run([python, "-c", script, str(unmeasured)], cwd=site, capture_output=True, text=True,
                            timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["onnx-fused"]


def exercise_server(base: str, checkpoint: Path) -> dict:
    """Every kind of answer of a running server; returns its /metadata."""
    bearer = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    texts = ["You are a complete idiot.", "Thanks for fixing the references!", ""]
    status, body, _ = call(f"{base}/predict", json.dumps({"texts": texts}).encode(), bearer)
    assert status == 200 and isinstance(body, dict)
    backend = body["model"]["backend"]
    expected = ModelInferer(checkpoint, backend=backend).predict_batch(texts)  # here, in the full environment
    for served, local in zip(body["predictions"], expected, strict=True):
        assert list(served["scores"]) == TOXIC_LABELS and served["labels"] == local["labels"]
        np.testing.assert_allclose(list(served["scores"].values()), list(local["scores"].values()), atol=1e-5)

    status, body, _ = call(f"{base}/predict?key={KEY}", b"data=hello+there",
                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and len(body["predictions"]) == 1
    assert call(f"{base}/health")[:2] == (200, {"status": "ok"})
    status, body, headers = call(f"{base}/predict", json.dumps({"text": "x"}).encode(),
                                 {"Content-Type": "application/json"})
    assert status == 401 and body["error"]["code"] == "unauthorized" and "Bearer" in headers["WWW-Authenticate"]
    status, body, _ = call(f"{base}/predict", json.dumps({"texts": ["a"] * 5}).encode(), bearer)
    assert status == 413 and body["error"]["code"] == "too_many_texts"
    status, body, _ = call(f"{base}/predict", b"plain words", {**bearer, "Content-Type": "text/plain"})
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    # A chunked body (no Content-Length) over MAX_BODY_BYTES is cut off while it is read.
    chunks = iter([b'{"text": "'] + [b"a" * 8192] * 10 + [b'"}'])
    status, body, _ = call(f"{base}/predict", chunks, bearer)  # type: ignore[arg-type]
    assert status == 413 and body["error"]["code"] == "body_too_large"
    status, body, _ = call(f"{base}/nowhere", headers=bearer)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, meta, _ = call(f"{base}/metadata", headers=bearer)
    assert isinstance(meta, dict)
    digest = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert status == 200 and meta["checkpoint_id"] == digest[:16] and meta["labels"] == TOXIC_LABELS
    status, document, _ = call(f"{base}/openapi.json", headers=bearer)
    assert status == 200 and set(document["paths"]) >= {"/predict", "/explain", "/", "/health", "/metrics"}
    exercise_explain_and_page(base, bearer, checkpoint, backend)
    # Whichever worker answers, /metrics counts the requests of all of them.
    for _ in range(3):
        status, metrics, headers = call(f"{base}/metrics", headers=bearer)
        assert status == 200 and headers.get_content_type() == "text/plain"
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(metrics) for s in family.samples}
        assert samples[("http_requests_total", (("endpoint", "/predict"), ("method", "POST"), ("status", "200")))] == 2
        assert samples[("http_errors_total", (("code", "unauthorized"),))] == 2  # /predict and /explain, no key
        assert samples[("predict_texts_per_request_sum", ())] == 4
        assert samples[("explain_texts_per_request_sum", ())] == 2
    return meta


def exercise_explain_and_page(base: str, bearer: dict[str, str], checkpoint: Path, backend: str) -> None:
    """/explain with the key, its limit and errors, and the page with its files without the key."""
    texts = ["You are a complete idiot.", "Thanks for fixing the references!"]
    status, body, _ = call(f"{base}/explain", json.dumps({"texts": texts}).encode(), bearer)
    assert status == 200
    expected = [ModelInferer(checkpoint, backend=backend).explain(text) for text in texts]
    for served, local in zip(body["explanations"], expected, strict=True):
        assert served["words"] == local["words"] and list(served["attributions"]) == list(local["attributions"])
    status, body, _ = call(f"{base}/explain", json.dumps({"texts": ["a"] * 9}).encode(), bearer)
    assert status == 413 and body["error"]["code"] == "too_many_texts"
    assert "MAX_EXPLAIN_TEXTS" in body["error"]["message"]
    status, body, _ = call(f"{base}/explain", json.dumps({"text": "a", "labels": ["nope"]}).encode(), bearer)
    assert status == 422 and body["error"]["code"] == "invalid_labels"
    status, body, _ = call(f"{base}/explain", json.dumps({"text": "a"}).encode(), {"Content-Type": "application/json"})
    assert status == 401
    status, page, headers = call(f"{base}/")  # no key: the page asks for it
    assert status == 200 and headers.get_content_type() == "text/html" and "static/app.js" in page
    for name in PAGE_FILES:
        assert call(f"{base}/static/{name}")[0] == 200

