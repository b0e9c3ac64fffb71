#!/usr/bin/env bash
# Local MLflow tracking server for arena-pref.
#   one worker, job execution off (the default starts ~15 processes, ~3 GB),
#   SQLite backend mlflow/mlflow.db and proxied artifacts under mlflow/artifacts,
#   bound to 127.0.0.1 unless --host says otherwise.
# Usage: mlflow/launch.sh [--host H] [--port P] [--background]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
host="127.0.0.1"
port="5000"
background=0
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --background) background=1; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "launch.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

mlflow_bin="$here/../.venv/bin/mlflow"
[ -x "$mlflow_bin" ] || mlflow_bin="$(command -v mlflow)"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false DO_NOT_TRACK=true
mkdir -p "$here/artifacts"
cmd=("$mlflow_bin" server
  --backend-store-uri "sqlite:///$here/mlflow.db"
  --artifacts-destination "$here/artifacts"
  --host "$host" --port "$port" --workers 1)

write_state() {  # read by tasks/tracking.py to find the running server
  printf '{"url": "http://%s:%s", "pid": %s}\n' "$host" "$port" "$1" > "$here/server.json"
}

if [ "$background" = 1 ]; then
  # Own process group (set -m), so that `kill -- -PID` stops the server and its workers.
  set -m
  nohup "${cmd[@]}" > "$here/server.log" 2>&1 &
  pid=$!
  write_state "$pid"
  echo "MLflow server starting at http://$host:$port (pid $pid, log $here/server.log)"
else
  write_state "$$"
  echo "MLflow UI at http://$host:$port (Ctrl-C to stop)"
  exec "${cmd[@]}"
fi
