-- Runs once, when the postgres-data volume is first initialised (docker-entrypoint-initdb.d),
-- as POSTGRES_USER: the Prefect database ("prefect") comes from POSTGRES_DB; MLflow gets its own.
CREATE DATABASE mlflow;
