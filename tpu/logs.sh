#!/usr/bin/env bash
# Show (or follow) the training log of one worker or of all workers of a TPU VM slice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: tpu/logs.sh --name NAME --zone ZONE [--worker N|all] [--follow] [--lines N] [options]

Print the last lines of the log that tpu/launch.sh writes on each worker (REMOTE_DIR/LOG). With
--worker all, every line is prefixed with the worker's hostname (workers print concurrently).

Options (default from the environment variable in brackets):
  --name NAME          TPU VM name                                   [MASKGEN_TPU_NAME]
  --zone ZONE          zone                                          [MASKGEN_TPU_ZONE]
  --project PROJECT    GCP project (default: gcloud's config)        [MASKGEN_TPU_PROJECT]
  --worker N|all       which worker (0 is the JAX coordinator)       [0]
  --follow, -f         keep printing new lines (tail -F) until interrupted
  --lines N, -n N      how many lines to show first                  [100]
  --remote-dir DIR     maskgen checkout on the workers               [MASKGEN_TPU_REMOTE_DIR, maskgen]
  --log FILE           log file, relative to REMOTE_DIR              [MASKGEN_TPU_LOG, logs/train.log]
  --dry-run            print the command instead of running it
  -h, --help           this help
EOF_USAGE
}

WORKER=0
FOLLOW=0
LINES=100

normalize_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --follow | -f) FOLLOW=1; shift ;;
    --lines | -n) need_value "$@"; LINES=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --log) need_value "$@"; LOG_FILE=$2; shift 2 ;;
    *) common_flag "$@"; shift "$SHIFT_BY" ;;
  esac
done

require_slice
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker takes a worker number or 'all', got '$WORKER'"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines takes a number, got '$LINES'"
check_gcloud
location_flags

tail_words="tail -n $LINES"
if [[ $FOLLOW == 1 ]]; then
  tail_words+=" -F"
fi
remote="$(remote_cd) && $tail_words $(printf '%q' "$LOG_FILE")"
if [[ $WORKER == all ]]; then
  remote+=" | sed -u \"s/^/[\$(hostname)] /\""
fi

run gcloud compute tpus tpu-vm ssh "$NAME" --worker="$WORKER" "${LOCATION[@]}" --command="$remote"
