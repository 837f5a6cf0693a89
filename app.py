"""The HTTP face of ModelInferer: a Flask app factory that serves one loaded checkpoint per worker process.

    CHECKPOINT_PATH=outputs/run/checkpoint gunicorn -c gunicorn.conf.py "app:create_app()"

Routes (serving/routes.py): POST /predict, GET /health, /ready, /metadata, /metrics, /openapi.json. Every error
is JSON {"error": {"code": ..., "message": ...}}. Settings come from environment variables (serving/settings.py).
"""

from __future__ import annotations

from flask import Flask

from inferer import ModelInferer
from serving.context import ServingContext, load_inferer
from serving.errors import register_error_handlers
from serving.hooks import register_hooks
from serving.routes import routes
from serving.settings import ServingSettings


def create_app(inferer: ModelInferer | None = None, settings: ServingSettings | None = None) -> Flask:
    """The API around `inferer`, or around the checkpoint the settings (default: environment) name."""
    settings = settings or ServingSettings.from_env()
    if inferer is None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        inferer = load_inferer(settings)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # scores keep the checkpoint's label order
    app.extensions["classifier"] = ServingContext.build(inferer, settings)
    register_hooks(app)
    register_error_handlers(app)
    app.register_blueprint(routes)
    return app
