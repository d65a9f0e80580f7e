# The MLflow tracking server of the team stack (infra/compose): MLflow at the version sdd's
# requirements.lock pins, with the PostgreSQL driver (backend store), boto3 (the proxied S3 /
# MinIO artifact store) and the basic-auth app's dependencies (mlflow[auth]).
#
#   docker build -f infra/docker/mlflow.Dockerfile -t sdd-mlflow:local infra/docker
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.43.117

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true

RUN pip install "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" "boto3==${BOTO3_VERSION}" \
 && useradd --create-home --uid 1000 mlflow \
 && mkdir -p /var/lib/mlflow-auth && chown mlflow:mlflow /var/lib/mlflow-auth

USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
