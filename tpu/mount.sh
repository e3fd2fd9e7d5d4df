#!/usr/bin/env bash
# Mount a Cloud Storage bucket at /gcs/BUCKET on every worker of a TPU VM slice (gcsfuse).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: tpu/mount.sh --name NAME --zone ZONE --bucket B [options]

Mount the Cloud Storage bucket B at /gcs/B on every worker (`gcloud compute tpus tpu-vm ssh NAME
--worker=all`) with Cloud Storage FUSE: install gcsfuse from Google's apt repository if it is
missing, then `gcsfuse --implicit-dirs B /gcs/B`, unless /gcs/B is already a mount point (so
rerunning is safe). tpu/setup.sh --bucket B runs the same command after installing maskgen; use
this script on its own after a worker rebooted (mounts do not survive a reboot) or to add a bucket.

maskgen writes its workdir (checkpoints, metrics, config.json, a lock file) through the file
system, and the processes of a multi-host run write their checkpoint shards into one shared
directory: tpu/launch.sh --bucket B runs with the workdir /gcs/B/NAME. The workers' service account
needs read and write access to the bucket (e.g. roles/storage.objectUser).

Options (default from the environment variable in brackets):
  --name NAME          TPU VM name                                   [MASKGEN_TPU_NAME]
  --zone ZONE          zone                                          [MASKGEN_TPU_ZONE]
  --project PROJECT    GCP project (default: gcloud's config)        [MASKGEN_TPU_PROJECT]
  --bucket B           bucket name (B or gs://B)                     [MASKGEN_TPU_BUCKET]
  --dry-run            print the command instead of running it
  -h, --help           this help
The mount root /gcs can be changed with MASKGEN_TPU_MOUNT_ROOT (setup.sh and launch.sh read it too).

Example:
  tpu/mount.sh --name mg-v5e16 --zone us-west4-a --bucket my-bucket
EOF_USAGE
}

BUCKET="${MASKGEN_TPU_BUCKET:-}"

normalize_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bucket) need_value "$@"; BUCKET=$2; shift 2 ;;
    *) common_flag "$@"; shift "$SHIFT_BY" ;;
  esac
done

require_slice
require "$BUCKET" --bucket MASKGEN_TPU_BUCKET
check_bucket
check_gcloud
location_flags

run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$(mount_command)"
