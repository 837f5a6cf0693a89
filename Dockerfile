# Serving image: the HTTP API (app.py under gunicorn) around one checkpoint, CPU only.
# torch and ONNX Runtime: BACKEND=auto (the default) serves the checkpoint's fastest exported graph whose
# validation cost export measured within bounds, else the PyTorch weights. Dockerfile.onnx: the same without torch.
#
#   docker build -t classifier-api .                                   # checkpoint copied from docker/model/
#   docker build --build-arg CHECKPOINT_DIR=path/in/context -t classifier-api .
#   docker run -p 8080:8080 classifier-api
#   docker run -p 8080:8080 -v "$PWD/outputs/run/checkpoint:/model:ro" classifier-api   # or mount one
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

# torch's CPU-only build: the same 2.13.0 release without the CUDA libraries (gigabytes this image never uses).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY requirements_inference.txt ./
RUN pip install --extra-index-url "$TORCH_INDEX_URL" -r requirements_inference.txt \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

# Only what serving runs; code stays root-owned and read-only for the app user.
COPY app.py inferer.py gunicorn.conf.py ./
COPY serving/ ./serving/
# the page at / (HTML, CSS, JS): served from the image itself, nothing fetched from elsewhere
COPY serving/static/ ./serving/static/
COPY models/ ./models/
COPY utils/__init__.py utils/machine.py ./utils/
COPY utils/checkpoint/ ./utils/checkpoint/
COPY utils/inference/ ./utils/inference/

# The checkpoint: a folder of the build context (default docker/model/, see its BAKING.md), or a volume on /model.
ARG CHECKPOINT_DIR=docker/model
COPY ${CHECKPOINT_DIR}/ /model/

ENV CHECKPOINT_PATH=/model \
    PORT=8080
USER app
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=4)"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
