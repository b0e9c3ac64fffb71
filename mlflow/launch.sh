#!/usr/bin/env bash
# Local MLflow tracking server for arena-pref.
#   one worker, job execution off (the default starts ~15 processes, ~3 GB),
#   SQLite backend STORE/mlflow.db and proxied artifacts under STORE/artifacts (STORE: --store, default
#   this folder; `arena-pref ui` passes mlflow/ in the project folder, never the installed package),
#   bound to 127.0.0.1 unless --host says otherwise.
# Usage: mlflow/launch.sh [--store DIR] [--host H] [--port P] [--background]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
store="$here"
host="127.0.0.1"
port="5000"
background=0
while [ $# -gt 0 ]; do
  case "$1" in
    --store) store="$2"; shift 2 ;;
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
mkdir -p "$store/artifacts"
store="$(cd "$store" && pwd)"
cmd=("$mlflow_bin" server
  --backend-store-uri "sqlite:///$store/mlflow.db"
  --artifacts-destination "$store/artifacts"
  --host "$host" --port "$port" --workers 1)

write_state() {  # read by tasks/tracking.py to find the running server
  printf '{"url": "http://%s:%s", "pid": %s}\n' "$host" "$port" "$1" > "$store/server.json"
}

if [ "$background" = 1 ]; then
  # Own process group (set -m), so that `kill -- -PID` stops the server and its workers.
  set -m
  nohup "${cmd[@]}" > "$store/server.log" 2>&1 &
  pid=$!
  write_state "$pid"
  echo "MLflow server starting at http://$host:$port (pid $pid, log $store/server.log)"
else
  write_state "$$"
  echo "MLflow UI at http://$host:$port (Ctrl-C to stop)"
  exec "${cmd[@]}"
fi
