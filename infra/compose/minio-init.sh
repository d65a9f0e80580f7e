#!/bin/sh
# One-shot set-up of MinIO for the team stack (the minio-init service, image minio/mc):
#   1. the bucket MLflow's proxied artifact store writes to ($MLFLOW_BUCKET);
#   2. a policy that allows only that bucket, and the service account MLflow uses
#      ($MLFLOW_S3_ACCESS_KEY / $MLFLOW_S3_SECRET_KEY), so the root credentials stay with MinIO.
# Safe to run again: every step leaves an existing bucket, policy or user as it should be.
set -eu

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$MLFLOW_BUCKET"

policy=/tmp/sdd-mlflow-policy.json
cat >"$policy" <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
     "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
     "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET/*"]}
  ]
}
POLICY
mc admin policy create local sdd-mlflow "$policy"
mc admin user add local "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"
if ! mc admin user info local "$MLFLOW_S3_ACCESS_KEY" | grep -q sdd-mlflow; then
  mc admin policy attach local sdd-mlflow --user "$MLFLOW_S3_ACCESS_KEY"
fi
echo "minio-init: bucket $MLFLOW_BUCKET and user $MLFLOW_S3_ACCESS_KEY ready"
