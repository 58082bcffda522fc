#!/usr/bin/env bash
# Start the team MLflow tracking server: PostgreSQL backend store, artifacts proxied to shared storage.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.internal:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://my-bucket/dctdiff/mlflow-artifacts \
#   cluster/mlflow/start.sh
#
# Everything is read from the environment (`mlflow server` reads these variables itself), so the
# database URI never appears on a command line, in `ps` or in this script's output:
#   MLFLOW_BACKEND_STORE_URI      required: postgresql://USER@HOST:PORT/DB; keep the password out of it
#                                 (~/.pgpass, or PGPASSFILE / PGPASSWORD: libpq reads them)
#   MLFLOW_ARTIFACTS_DESTINATION  required: s3://bucket/prefix, gs://bucket/prefix or a shared folder;
#                                 clients upload through this server, only it needs storage credentials
#   MLFLOW_HOST                   default 127.0.0.1 (this machine only); give the private address the
#                                 cluster reaches it on to serve a cluster, never a public one
#   MLFLOW_PORT                   default 5000
#   MLFLOW_WORKERS                default 2 (uvicorn worker processes)
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers to accept (MLflow's default: localhost and private IPs)
# Arguments are passed on to `mlflow server` (e.g. --app-name basic-auth). MLflow's job runner (an
# optional MLflow 3 feature this project does not use) is off: it starts a dozen more processes
# (DESIGN.md §9). See cluster/mlflow/README.md.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://USER@HOST:PORT/DB (cluster/mlflow/README.md)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION to shared storage, e.g. s3://BUCKET/prefix}"
case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql://* | postgresql+*://*) ;;
  *) echo "start.sh: MLFLOW_BACKEND_STORE_URI must be a postgresql:// URI (a team server needs a real database)" >&2
     exit 2 ;;
esac

export MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_WORKERS="${MLFLOW_WORKERS:-2}"
export MLFLOW_SERVE_ARTIFACTS=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
unset MLFLOW_DEFAULT_ARTIFACT_ROOT  # new experiments use mlflow-artifacts:/, served from the destination

case "$MLFLOW_HOST" in
  0.0.0.0 | :: | "[::]")
    echo "start.sh: warning: listening on every interface; allow port $MLFLOW_PORT only from the cluster" >&2 ;;
esac
# user:password@ -> user:***@ (the URI itself stays in the environment only)
backend=$(printf '%s' "$MLFLOW_BACKEND_STORE_URI" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#')
echo "MLflow server on http://$MLFLOW_HOST:$MLFLOW_PORT (backend $backend, artifacts $MLFLOW_ARTIFACTS_DESTINATION)"
exec "${MLFLOW:-mlflow}" server "$@"
