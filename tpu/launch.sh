#!/usr/bin/env bash
# Launch the same `maskgen train` on every worker of a TPU VM slice, in the background, one log per worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/launch.sh --name NAME --zone ZONE --config CONFIG[:ARG] (--workdir DIR | --bucket B) [options] [-- TRAIN_ARGS...]

Start `maskgen train --config CONFIG --workdir DIR TRAIN_ARGS...` on every worker at once
(`gcloud compute tpus tpu-vm ssh NAME --worker=all`), under nohup, with stdout and stderr appended
to REMOTE_DIR/LOG on each worker. MASKGEN_DISTRIBUTED=auto is set, so each process calls
jax.distributed.initialize(), which finds the coordinator, process count and process id itself on
TPU VMs. Every worker must run the same command: the processes form one job.

DIR is a path on the workers and must be one directory that they all share: each process writes its
own checkpoint shards into it. maskgen writes workdirs through the file system, so a gs:// URL is
refused. Instead, mount the bucket on every worker (tpu/setup.sh --bucket B or tpu/mount.sh
--bucket B mount gs://B at /gcs/B) and pass --bucket B, for DIR = /gcs/B/NAME, or --workdir
/gcs/B/PATH. Each worker checks that the bucket of a DIR under /gcs is mounted before starting.
The bucket also outlives the workers, whose disks go with the slice.

To resume after a preemption or a stop, run the same command again: maskgen continues from the latest
checkpoint in DIR. A worker that still runs the previous launch refuses a new one (tpu/stop.sh).

Options (default from the environment variable in brackets):
  --name NAME          TPU VM name                                   [MASKGEN_TPU_NAME]
  --zone ZONE          zone                                          [MASKGEN_TPU_ZONE]
  --project PROJECT    GCP project (default: gcloud's config)        [MASKGEN_TPU_PROJECT]
  --config CONFIG      config file, relative to REMOTE_DIR, with an optional :ARG
  --workdir DIR        run directory on the workers, shared by all (e.g. /gcs/B/PATH)
  --bucket B           without --workdir, DIR is /gcs/B/NAME         [MASKGEN_TPU_BUCKET]
  --env KEY=VALUE      extra environment variable for the run (repeatable), e.g. TFDS_DATA_DIR=/gcs/B/tfds
                       (maskgen's data sources read local paths too: use mounted paths, not gs://)
  --remote-dir DIR     maskgen checkout on the workers (see setup.sh) [MASKGEN_TPU_REMOTE_DIR, maskgen]
  --log FILE           log file, relative to REMOTE_DIR              [MASKGEN_TPU_LOG, logs/train.log]
  --dry-run            print the command instead of running it
  -h, --help           this help
Everything after `--` is passed to `maskgen train` (e.g. --config.key=value overrides), quoted safely.
The mount root /gcs can be changed with MASKGEN_TPU_MOUNT_ROOT (as for setup.sh and mount.sh).

Example (workdir /gcs/my-bucket/mg-v5e16):
  tpu/launch.sh --name mg-v5e16 --zone us-west4-a --config experiments/mae_imagenet.py:size=B \
      --bucket my-bucket -- --config.data.data_dir=/gcs/my-bucket/tfds
EOF
}

CONFIG=""
WORKDIR=""
BUCKET="${MASKGEN_TPU_BUCKET:-}"
ENV_ASSIGNMENTS=()
TRAIN_ARGS=()

normalize_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) need_value "$@"; CONFIG=$2; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift 2 ;;
    --bucket) need_value "$@"; BUCKET=$2; shift 2 ;;
    --env) need_value "$@"; ENV_ASSIGNMENTS+=("$2"); shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --log) need_value "$@"; LOG_FILE=$2; shift 2 ;;
    --config.*) die "maskgen overrides go after a bare --: tpu/launch.sh ... -- $1=VALUE" ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) common_flag "$@"; shift "$SHIFT_BY" ;;
  esac
done

require_slice
require "$CONFIG" --config ""
if [[ $WORKDIR == *://* ]]; then
  # maskgen train refuses URLs too; refusing here saves starting the slice's processes for nothing.
  if [[ $WORKDIR =~ ^gs://([^/]+)/*(.*)$ ]]; then
    url_bucket=${BASH_REMATCH[1]}
    url_path=${BASH_REMATCH[2]%/}
    hint="tpu/setup.sh --bucket $url_bucket, or tpu/mount.sh --bucket $url_bucket) and pass"
    hint+=" --workdir $MOUNT_ROOT/$url_bucket${url_path:+/$url_path} (or --bucket $url_bucket: $MOUNT_ROOT/$url_bucket/$NAME)"
  else
    hint="tpu/setup.sh --bucket B, or tpu/mount.sh --bucket B) and pass --workdir $MOUNT_ROOT/B/PATH or --bucket B"
  fi
  die "--workdir $WORKDIR is a URL, but maskgen writes its workdir through the file system (every" \
    "worker writes its checkpoint shards into it). Mount the bucket on every worker ($hint"
fi
if [[ -z $WORKDIR && -n $BUCKET ]]; then
  check_bucket
  WORKDIR="$MOUNT_ROOT/$BUCKET/$NAME"
fi
require "$WORKDIR" "--workdir (or --bucket)" MASKGEN_TPU_BUCKET
require "$REMOTE_DIR" --remote-dir MASKGEN_TPU_REMOTE_DIR
require "$LOG_FILE" --log MASKGEN_TPU_LOG
check_gcloud
location_flags

# The remote command, one line. User-provided values go through printf %q, so spaces, quotes and
# shell characters reach maskgen unchanged.
env_words="MASKGEN_DISTRIBUTED=auto"
for assignment in ${ENV_ASSIGNMENTS[@]+"${ENV_ASSIGNMENTS[@]}"}; do
  key=${assignment%%=*}
  if [[ $assignment != *=* || ! $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    die "--env takes KEY=VALUE with KEY a variable name, got '$assignment'"
  fi
  env_words+=" $key=$(printf '%q' "${assignment#*=}")"
done
train_words="$(printf '%q ' .venv/bin/maskgen train --config "$CONFIG" --workdir "$WORKDIR" \
  ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})"
train_words=${train_words% }
log_q="$(printf '%q' "$LOG_FILE")"
pid_q="$(printf '%q' "$(pid_file "$LOG_FILE")")"
log_dir_q="$(printf '%q' "$(dirname "$LOG_FILE")")"

remote="set -e; $(remote_cd) && mkdir -p $log_dir_q"
remote+="; if [ -f $pid_q ] && kill -0 \"\$(cat $pid_q)\" 2>/dev/null; then"
remote+=" echo \"\$(hostname): maskgen is already running (pid \$(cat $pid_q)); stop it first (tpu/stop.sh)\" >&2; exit 1; fi"
if [[ $WORKDIR == "$MOUNT_ROOT"/?* ]]; then
  # A workdir under the mount root must be on the mounted bucket: without the mount (a worker that
  # rebooted, say), maskgen would write into a local directory of that name and lose the run.
  bucket_and_path=${WORKDIR#"$MOUNT_ROOT"/}
  mount_point="$MOUNT_ROOT/${bucket_and_path%%/*}"
  mount_q="$(printf '%q' "$mount_point")"
  remote+="; if ! mountpoint -q $mount_q; then echo \"\$(hostname): $mount_q is not mounted; mount the bucket"
  remote+=" first (tpu/mount.sh --bucket $(printf '%q' "${mount_point##*/}"))\" >&2; exit 1; fi"
else
  printf '%s: note: workdir %s is not under %s/: it must be one directory that every worker shares (see --bucket)\n' \
    "$SCRIPT_NAME" "$WORKDIR" "$MOUNT_ROOT" >&2
fi
remote+="; echo \"=== \$(date -u +%FT%TZ) launch on \$(hostname)\" >> $log_q"
remote+="; $env_words nohup $train_words >> $log_q 2>&1 < /dev/null &"
remote+=" echo \$! > $pid_q; echo \"\$(hostname): started maskgen train, pid \$!, log \$(pwd)/$log_q\""

run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$remote"
