# The pipeline's step image: Python slim plus kpigate's core (no training libraries, no MLflow
# server: mlflow-skinny is enough for the registry and run artifacts) and the predlog extra
# (SQLAlchemy and psycopg: soak-and-collect --source predlog reads the prediction log).
# Build from the repository root:  docker build -f images/step.Dockerfile -t kpigate-step:0.1.0 .
# The WorkflowTemplate runs each step as  python -m kpigate.steps.<module> ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
# kpigate/steps and kpigate/workflows are symlinks to the top-level steps/ and workflows/.
COPY kpigate ./kpigate
COPY steps ./steps
COPY workflows ./workflows
RUN pip install ".[predlog]" && rm -rf /src

WORKDIR /app
USER 65532:65532

LABEL org.opencontainers.image.title="kpigate-step" \
      io.kpigate.step-modules="kpigate.steps.registry_approval kpigate.steps.deploy_stage kpigate.steps.soak_and_collect kpigate.steps.evaluate_gate kpigate.steps.promote_or_rollback"

ENTRYPOINT ["python", "-m"]
CMD ["kpigate.cli", "--help"]
