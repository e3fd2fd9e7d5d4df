#!/usr/bin/env bash
# Copy a run directory between this machine and a Cloud Storage bucket (gcloud storage rsync).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: tpu/sync.sh [options] up LOCAL_DIR [gs://BUCKET/PATH]
       tpu/sync.sh [options] down gs://BUCKET/PATH [LOCAL_DIR]

Make the destination match the source with `gcloud storage rsync --recursive`, from this machine
(not the workers): `down` copies a workdir from a bucket here, e.g. a TPU run that wrote to
/gcs/B/NAME on the workers (tpu/launch.sh --bucket B) is gs://B/NAME here, so
`tpu/sync.sh down gs://B/NAME runs/NAME` fetches it to run `maskgen eval` or TensorBoard locally;
`up` copies a local workdir to a bucket (e.g. to continue it on a slice from /gcs/B/...).
Files only in the destination are kept unless --delete is given.
Without the gs:// argument of `up`, the destination is gs://BUCKET/$(basename LOCAL_DIR) (--bucket);
without LOCAL_DIR for `down`, it is ./$(basename gs://...).

Options (default from the environment variable in brackets):
  --project PROJECT    GCP project (default: gcloud's config)        [MASKGEN_TPU_PROJECT]
  --bucket B           default bucket for `up`                       [MASKGEN_TPU_BUCKET]
  --delete             also delete destination files that the source lacks
  --dry-run            print the command instead of running it
  -h, --help           this help
(gcloud storage is not zonal: this script takes no --name or --zone.)

Examples:
  tpu/sync.sh down gs://my-bucket/mg-v5e16 runs/mg-v5e16
  tpu/sync.sh up runs/mae_b16 gs://my-bucket/mae_b16
EOF_USAGE
}

BUCKET="${MASKGEN_TPU_BUCKET:-}"
DELETE=0
POSITIONAL=()

normalize_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bucket) need_value "$@"; BUCKET=$2; shift 2 ;;
    --delete) DELETE=1; shift ;;
    --name | --zone) die "$1: gcloud storage is not zonal; sync.sh takes only --project" ;;
    --) shift; POSITIONAL+=("$@"); break ;;
    -*) common_flag "$@"; shift "$SHIFT_BY" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done

[[ ${#POSITIONAL[@]} -ge 2 && ${#POSITIONAL[@]} -le 3 ]] || die "expected 'up LOCAL_DIR [gs://...]' or 'down gs://... [LOCAL_DIR]' (see --help)"
DIRECTION=${POSITIONAL[0]}
case "$DIRECTION" in
  up)
    SRC=${POSITIONAL[1]}
    if [[ ${#POSITIONAL[@]} -eq 3 ]]; then
      DEST=${POSITIONAL[2]}
    else
      require "$BUCKET" "--bucket (or a gs:// destination)" MASKGEN_TPU_BUCKET
      DEST="$(bucket_url "$BUCKET")/$(basename "$SRC")"
    fi
    [[ $SRC != gs://* ]] || die "up: the source is a local directory, got $SRC"
    [[ $DEST == gs://* ]] || die "up: the destination must be a gs:// path, got $DEST"
    [[ $DRY_RUN == 1 || -d $SRC ]] || die "up: $SRC is not a directory"
    ;;
  down)
    SRC=${POSITIONAL[1]}
    SRC=${SRC%/}
    DEST=${POSITIONAL[2]:-$(basename "$SRC")}
    [[ $SRC == gs://* ]] || die "down: the source must be a gs:// path, got $SRC"
    [[ $DEST != gs://* ]] || die "down: the destination is a local directory, got $DEST"
    ;;
  *) die "the first argument is 'up' or 'down', got '$DIRECTION'" ;;
esac
check_gcloud
project_flags

DELETE_FLAGS=()
if [[ $DELETE == 1 ]]; then
  DELETE_FLAGS=(--delete-unmatched-destination-objects)
fi
if [[ $DIRECTION == down && $DRY_RUN != 1 ]]; then
  mkdir -p "$DEST"
fi
run gcloud storage rsync --recursive ${DELETE_FLAGS[@]+"${DELETE_FLAGS[@]}"} "$SRC" "$DEST" \
  ${PROJECT_FLAGS[@]+"${PROJECT_FLAGS[@]}"}
