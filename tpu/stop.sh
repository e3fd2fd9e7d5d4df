#!/usr/bin/env bash
# Stop the run that tpu/launch.sh started, on every worker, with SIGTERM: maskgen saves a checkpoint and exits.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: tpu/stop.sh --name NAME --zone ZONE [--signal SIG] [options]

Send SIGTERM (or --signal SIG) to the maskgen process that tpu/launch.sh started on every worker
(its pid is kept next to the log). On SIGTERM maskgen saves a checkpoint and exits, as it does when
a preemption delivers SIGTERM, so this is also how to rehearse a preemption. Resume with the same
tpu/launch.sh command.

Options (default from the environment variable in brackets):
  --name NAME          TPU VM name                                   [MASKGEN_TPU_NAME]
  --zone ZONE          zone                                          [MASKGEN_TPU_ZONE]
  --project PROJECT    GCP project (default: gcloud's config)        [MASKGEN_TPU_PROJECT]
  --signal SIG         signal name                                   [TERM]
  --remote-dir DIR     maskgen checkout on the workers               [MASKGEN_TPU_REMOTE_DIR, maskgen]
  --log FILE           log file, relative to REMOTE_DIR              [MASKGEN_TPU_LOG, logs/train.log]
  --dry-run            print the command instead of running it
  -h, --help           this help
EOF_USAGE
}

SIGNAL=TERM

normalize_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --signal) need_value "$@"; SIGNAL=${2#SIG}; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --log) need_value "$@"; LOG_FILE=$2; shift 2 ;;
    *) common_flag "$@"; shift "$SHIFT_BY" ;;
  esac
done

require_slice
[[ $SIGNAL =~ ^[A-Z0-9]+$ ]] || die "--signal takes a signal name such as TERM or INT, got '$SIGNAL'"
check_gcloud
location_flags

pid_q="$(printf '%q' "$(pid_file "$LOG_FILE")")"
remote="$(remote_cd) && if [ -f $pid_q ] && kill -0 \"\$(cat $pid_q)\" 2>/dev/null;"
remote+=" then kill -$SIGNAL \"\$(cat $pid_q)\" && echo \"\$(hostname): sent SIG$SIGNAL to pid \$(cat $pid_q)\";"
remote+=" else echo \"\$(hostname): no maskgen run\"; fi"

run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$remote"
