# The kpigate router: champion and candidate behind sticky weighted canary/shadow routing,
# with the prediction log, /feedback, /metrics and the admin API (token: KPIGATE_ADMIN_TOKEN
# or a mounted file named by KPIGATE_ADMIN_TOKEN_FILE).
# Build from the repository root:  docker build -f images/router.Dockerfile -t kpigate-router:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kpigate ./kpigate
COPY steps ./steps
COPY workflows ./workflows
RUN pip install ".[serve]" && rm -rf /src

WORKDIR /app
USER 65532:65532
EXPOSE 8080

LABEL org.opencontainers.image.title="kpigate-router"

ENTRYPOINT ["python", "-m", "kpigate.cli", "serve", "--host", "0.0.0.0", "--port", "8080"]
