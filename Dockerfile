# check=skip=SecretsUsedInArgOrEnv
# (BuildKit directive above: ACCESS_TOKEN is a build argument on purpose, see the end of the file.)
#
# Production image of image-service.
#   docker build --build-arg ACCESS_TOKEN="$ACCESS_TOKEN" -t image-service:0.0.1 .
#   docker run -p 8000:8000 -v image-data:/app/data [-e ACCESS_TOKEN=...] image-service:0.0.1
FROM python:3.11.10-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies in their own layer, rebuilt only when the packaging files change: install
# the package in editable mode from its metadata and a stub of the package; the real
# source copied next lands where the editable install already points. (README.md is left
# out so that editing it keeps this layer; setuptools only warns that it is missing.)
COPY setup.cfg setup.py ./
COPY uploader/__init__.py uploader/
COPY image_client/__init__.py image_client/
RUN pip install -e .

COPY . .

# The source stays root-owned and read-only to the service (so its bytecode is compiled
# now); only /app/data is writable.
RUN python3 -m compileall -q uploader image_client \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /app/data \
    && chown app:app /app/data
VOLUME /app/data
USER 10001:10001

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('PORT') or '8000'), timeout=4)"]

# The documented build command passes the Imgur token as a build argument, so it is
# declared here, last, where changing it rebuilds nothing above. It ends up in the image's
# metadata: for an image you share, leave it unset and pass `-e ACCESS_TOKEN` to docker run.
# hadolint ignore=DL3064
ARG ACCESS_TOKEN=""
# hadolint ignore=DL3064
ENV ACCESS_TOKEN=${ACCESS_TOKEN}

CMD ["bin/serve"]
