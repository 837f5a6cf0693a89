"""gunicorn settings for `gunicorn -c gunicorn.conf.py "app:create_app()"`, all derived from the environment.

Each worker loads its own model after the fork (preload_app = False: torch and fork do not mix well) and runs
TORCH_THREADS intra-op threads (torch or ONNX Runtime, whichever BACKEND resolves to); workers = cores //
TORCH_THREADS, so together they do not oversubscribe the cores. Nothing here imports torch: the ONNX image has none.
The worker class (serving/worker.py) reads every request in full in an event loop, under HEADER_TIMEOUT and
BODY_TIMEOUT, before a thread runs the app on it, so clients that send slowly cost a socket, never a thread. It is
told the app's routes here: POST /predict and /explain run in THREADS model threads per worker (the app runs one
forward pass at a time; with MICROBATCH=1 the requests waiting in those threads share it, so THREADS, default 32
then, else 4, bounds a batch); /health, /ready, /metrics and the rest run in two threads of their own. The master
checks the checkpoint's files before starting any worker, so a damaged one stops the server at once with its name.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from serving.settings import ServingSettings
from serving.worker import BufferingWorker, RequestRouting
from utils.checkpoint.contract import CheckpointError, CheckpointFolder
from utils.inference.backends import backend_for

APP_LOAD_ERROR = 4  # gunicorn's own exit status for an application that cannot be loaded
settings = ServingSettings.from_env()
# Prometheus values of every worker go to files here, and /metrics adds them up (prometheus-client's
# multiprocess mode): a scrape then counts the whole server, whichever worker answers it.
metrics_dir_is_ours = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="classifier-metrics-"))
# Before any worker imports torch: OpenMP/MKL pools size themselves from these at start.
os.environ.setdefault("OMP_NUM_THREADS", str(settings.torch_threads))
os.environ.setdefault("MKL_NUM_THREADS", str(settings.torch_threads))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # serving reads the checkpoint folder only, never a hub

bind = f"{settings.host}:{settings.port}"
if settings.metrics_port:  # a second listener that serves GET /metrics and /health only (serving/worker.py)
    bind = [bind, f"{settings.host}:{settings.metrics_port}"]
workers = settings.worker_count()
# What the worker knows of the app's routes: the ones that wait for the model, and all that METRICS_PORT serves.
routing = RequestRouting(model_routes=frozenset({("POST", "/predict"), ("POST", "/explain")}),
                         metrics_listener_paths=("/metrics", "/health"))
worker_class = BufferingWorker.routed(routing)
threads = settings.thread_count()
worker_connections = settings.max_connections
preload_app = False
timeout = 120  # a worker silent this long is restarted; loading the model counts
graceful_timeout = 30  # on SIGTERM, requests in flight get this long to finish
keepalive = 5
control_socket_disable = True  # no runtime control needed; avoids a socket file in $HOME shared by servers
accesslog = "-"
errorlog = "-"
loglevel = "info"
# The path without its query string: the original API's ?key= must not end up in the logs.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'


def on_starting(server) -> None:
    for stale in Path(metrics_dir).glob("*.db"):  # values of an earlier run
        stale.unlink()
    print(settings.describe(), f"\n  workers         {workers} x {threads} threads", flush=True)
    try:  # here, once, in a second: not in every worker after a torch import, with a traceback each
        if not settings.checkpoint_path:
            raise CheckpointError("set CHECKPOINT_PATH to a checkpoint folder written by training")
        folder = CheckpointFolder(settings.checkpoint_path)
        # BACKEND=auto: the files of what the workers will choose (the same choice, from the same folder)
        folder.verify(backend_for(folder, settings.backend, quantize=settings.quantize,
                                  precision=settings.precision, device=settings.device).backend)
    except (CheckpointError, FileNotFoundError) as error:
        server.log.error("cannot serve: %s", error)
        on_exit(server)
        sys.exit(APP_LOAD_ERROR)



def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if metrics_dir_is_ours:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def post_fork(server, worker) -> None:
    import logging

    # the thread count itself is set where the model loads (utils/inference/runners.py), for whichever engine runs it
    app_log = logging.getLogger("classifier")  # the app's messages go where gunicorn's own go
    app_log.handlers, app_log.propagate = server.log.error_log.handlers, False
    app_log.setLevel(logging.INFO)
