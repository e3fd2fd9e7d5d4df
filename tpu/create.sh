#!/usr/bin/env bash
# Create a TPU VM slice, directly or through a queued resource, optionally spot, optionally waiting.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/create.sh --name NAME --zone ZONE [options] [-- EXTRA_GCLOUD_FLAGS...]

Create a TPU VM slice with `gcloud compute tpus tpu-vm create`, or, with --queued, request it as a
queued resource (`gcloud compute tpus queued-resources create ... --node-id NAME`).

Options (default from the environment variable in brackets):
  --name NAME              TPU VM (node) name                       [MASKGEN_TPU_NAME]
  --zone ZONE              zone, e.g. us-west4-a                     [MASKGEN_TPU_ZONE]
  --project PROJECT        GCP project (default: gcloud's config)    [MASKGEN_TPU_PROJECT]
  --accelerator-type TYPE  slice type                                [MASKGEN_TPU_ACCELERATOR_TYPE, v5litepod-16]
  --runtime-version V      TPU software version                      [MASKGEN_TPU_RUNTIME_VERSION, v2-alpha-tpuv5-lite]
  --spot                   spot capacity (cheaper, preemptible)      [MASKGEN_TPU_SPOT=1]
  --queued                 create through a queued resource          [MASKGEN_TPU_QUEUED=1]
  --queued-resource-id ID  queued resource name (default: NAME)      [MASKGEN_TPU_QUEUED_RESOURCE_ID]
  --wait                   poll until the slice is READY (queued: ACTIVE); fail on FAILED/SUSPENDED
  --poll-seconds N         seconds between polls with --wait         [MASKGEN_TPU_POLL_SECONDS, 30]
  --dry-run                print the gcloud commands instead of running them
  -h, --help               this help
Everything after `--` is appended to the gcloud create command (e.g. -- --network=my-net).

Examples:
  tpu/create.sh --name mg-v5e16 --zone us-west4-a --queued --spot --wait
  tpu/create.sh --name mg-v5e8 --zone us-west4-a --accelerator-type v5litepod-8 --dry-run
EOF
}

ACCELERATOR_TYPE="${MASKGEN_TPU_ACCELERATOR_TYPE:-v5litepod-16}"
RUNTIME_VERSION="${MASKGEN_TPU_RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
SPOT="${MASKGEN_TPU_SPOT:-0}"
QUEUED="${MASKGEN_TPU_QUEUED:-0}"
QUEUED_RESOURCE_ID="${MASKGEN_TPU_QUEUED_RESOURCE_ID:-}"
POLL_SECONDS="${MASKGEN_TPU_POLL_SECONDS:-30}"
WAIT=0
EXTRA=()

normalize_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --accelerator-type) need_value "$@"; ACCELERATOR_TYPE=$2; shift 2 ;;
    --runtime-version) need_value "$@"; RUNTIME_VERSION=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --queued-resource-id) need_value "$@"; QUEUED_RESOURCE_ID=$2; shift 2 ;;
    --wait) WAIT=1; shift ;;
    --poll-seconds) need_value "$@"; POLL_SECONDS=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) common_flag "$@"; shift "$SHIFT_BY" ;;
  esac
done

require_slice
require "$ACCELERATOR_TYPE" --accelerator-type MASKGEN_TPU_ACCELERATOR_TYPE
require "$RUNTIME_VERSION" --runtime-version MASKGEN_TPU_RUNTIME_VERSION
[[ $POLL_SECONDS =~ ^[0-9]+$ ]] || die "--poll-seconds must be a whole number, got '$POLL_SECONDS'"
QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-$NAME}"
check_gcloud
location_flags

SPOT_FLAGS=()
if [[ $SPOT == 1 ]]; then
  SPOT_FLAGS=(--spot)
fi

if [[ $QUEUED == 1 ]]; then
  # The queued-resources API names the software version --runtime-version; tpu-vm create calls it --version.
  run gcloud compute tpus queued-resources create "$QUEUED_RESOURCE_ID" "${LOCATION[@]}" \
    --node-id="$NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
    ${SPOT_FLAGS[@]+"${SPOT_FLAGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  DESCRIBE=(gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE_ID" "${LOCATION[@]}"
    --format='value(state.state)')
  WANT=ACTIVE
  RESOURCE="queued resource $QUEUED_RESOURCE_ID"
else
  run gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    ${SPOT_FLAGS[@]+"${SPOT_FLAGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  DESCRIBE=(gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)')
  WANT=READY
  RESOURCE="TPU $NAME"
fi

if [[ $WAIT != 1 ]]; then
  exit 0
fi
if [[ $DRY_RUN == 1 ]]; then
  run "${DESCRIBE[@]}"  # the poll loop runs this until the state is $WANT
  exit 0
fi
failures=0
while true; do
  if ! state="$(run "${DESCRIBE[@]}")"; then
    failures=$((failures + 1))
    [[ $failures -lt 5 ]] || die "describe failed $failures times in a row; giving up"
    state=""
  else
    failures=0
  fi
  printf '%s: state %s (waiting for %s)\n' "$SCRIPT_NAME" "${state:-unknown}" "$WANT" >&2
  case "$state" in
    "$WANT") break ;;
    FAILED | SUSPENDED | SUSPENDING | PREEMPTED | TERMINATED)
      printf '%s: error: %s is %s\n' "$SCRIPT_NAME" "$RESOURCE" "$state" >&2
      exit 1 ;;
  esac
  sleep "$POLL_SECONDS"
done
printf '%s: %s is %s\n' "$SCRIPT_NAME" "$RESOURCE" "$WANT" >&2
