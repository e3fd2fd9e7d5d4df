#!/usr/bin/env bash
# Delete a TPU VM slice, or (--queued) its queued resource together with the slice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: tpu/delete.sh --name NAME --zone ZONE [--queued [--queued-resource-id ID]] [options]

Delete the slice without a confirmation prompt (gcloud --quiet):
  `gcloud compute tpus tpu-vm delete NAME`, or with --queued
  `gcloud compute tpus queued-resources delete ID --force`, which deletes the slice first.
Anything on the workers' disks (the code, the venv, logs/train.log) is lost. A workdir in a mounted
bucket (tpu/launch.sh --bucket B: /gcs/B/NAME) is not: it stays in gs://B/NAME, where a new slice
resumes it and `tpu/sync.sh down gs://B/NAME runs/NAME` copies it to this machine. Copy anything
else you need first.

Options (default from the environment variable in brackets):
  --name NAME              TPU VM name                               [MASKGEN_TPU_NAME]
  --zone ZONE              zone                                      [MASKGEN_TPU_ZONE]
  --project PROJECT        GCP project (default: gcloud's config)    [MASKGEN_TPU_PROJECT]
  --queued                 delete the queued resource (and its slice) [MASKGEN_TPU_QUEUED=1]
  --queued-resource-id ID  queued resource name (default: NAME)      [MASKGEN_TPU_QUEUED_RESOURCE_ID]
  --dry-run                print the command instead of running it
  -h, --help               this help
EOF_USAGE
}

QUEUED="${MASKGEN_TPU_QUEUED:-0}"
QUEUED_RESOURCE_ID="${MASKGEN_TPU_QUEUED_RESOURCE_ID:-}"

normalize_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --queued) QUEUED=1; shift ;;
    --queued-resource-id) need_value "$@"; QUEUED_RESOURCE_ID=$2; shift 2 ;;
    *) common_flag "$@"; shift "$SHIFT_BY" ;;
  esac
done

require_slice
QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-$NAME}"
check_gcloud
location_flags

if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE_ID" "${LOCATION[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
fi
