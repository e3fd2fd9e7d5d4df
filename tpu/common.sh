# shellcheck shell=bash
# Sourced by the tpu/*.sh scripts, never run on its own. It holds what they share:
#   - settings that every script takes as a flag, defaulting to a MASKGEN_TPU_* variable;
#   - argument parsing helpers (`--flag value` and `--flag=value` both work);
#   - `run CMD...`, which prints CMD (shell-quoted, one line) under --dry-run and runs it otherwise.
# Written for bash >= 3.2 (macOS's /bin/bash) as well as Linux bash.

NAME="${MASKGEN_TPU_NAME:-}"
ZONE="${MASKGEN_TPU_ZONE:-}"
PROJECT="${MASKGEN_TPU_PROJECT:-}"
DRY_RUN="${MASKGEN_TPU_DRY_RUN:-0}"
# Where maskgen lives on each worker, relative to the login user's home directory (or absolute).
REMOTE_DIR="${MASKGEN_TPU_REMOTE_DIR:-maskgen}"

SCRIPT_NAME="$(basename "$0")"

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 2
}

# need_value FLAG [VALUE...]: FLAG must be followed by a value that is not itself a flag.
need_value() {
  if [[ $# -lt 2 || $2 == --* ]]; then
    die "$1 needs a value"
  fi
}

# require VALUE FLAG ENVVAR: a required setting must be non-empty.
require() {
  if [[ -z $1 ]]; then
    die "$2 is required${3:+ (or set $3)}"
  fi
}

# normalize_args ARGS...: sets ARGS to the arguments with `--flag=value` split into `--flag value`,
# up to a bare `--` (everything after it is kept as is). Use:
#   normalize_args "$@"; set -- ${ARGS[@]+"${ARGS[@]}"}
normalize_args() {
  ARGS=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --) ARGS+=("$@"); return 0 ;;
      --*=*) ARGS+=("${1%%=*}" "${1#*=}") ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

# common_flag ARGS...: handles the flags every script takes, setting SHIFT_BY to the words used.
# The caller defines usage(). Anything else is an error.
# shellcheck disable=SC2034  # SHIFT_BY is read by the sourcing script
common_flag() {
  case "$1" in
    --name) need_value "$@"; NAME=$2; SHIFT_BY=2 ;;
    --zone) need_value "$@"; ZONE=$2; SHIFT_BY=2 ;;
    --project) need_value "$@"; PROJECT=$2; SHIFT_BY=2 ;;
    --dry-run) DRY_RUN=1; SHIFT_BY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see $SCRIPT_NAME --help)" ;;
  esac
}

# require_slice: --name and --zone are needed by every command that talks to a slice.
require_slice() {
  require "$NAME" --name MASKGEN_TPU_NAME
  require "$ZONE" --zone MASKGEN_TPU_ZONE
}

# location_flags: sets LOCATION to the flags every `gcloud compute tpus` command gets.
location_flags() {
  LOCATION=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION+=(--project="$PROJECT")
  fi
}

# project_flags: sets PROJECT_FLAGS to (--project=P) when a project is given, else to nothing.
project_flags() {
  PROJECT_FLAGS=()
  if [[ -n $PROJECT ]]; then
    PROJECT_FLAGS+=(--project="$PROJECT")
  fi
}

# quote_word WORD: WORD as the shell would need it typed. Safe words print bare; `--flag=value`
# keeps the flag bare and quotes only the value; anything else is single-quoted.
quote_word() {
  local word=$1 prefix="" rest quoted=""
  if [[ $word =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  if [[ -n $word && $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s%s' "$prefix" "$word"
    return 0
  fi
  rest=$word
  while [[ $rest == *"'"* ]]; do
    quoted+="${rest%%"'"*}'\\''"
    rest=${rest#*"'"}
  done
  quoted+=$rest
  printf "%s'%s'" "$prefix" "$quoted"
}

# quote_words WORDS...: the words as one shell command line.
quote_words() {
  local word line=""
  for word in "$@"; do
    line+="${line:+ }$(quote_word "$word")"
  done
  printf '%s\n' "$line"
}

# run CMD...: under --dry-run print CMD and do nothing; otherwise echo it to stderr and run it.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_words "$@"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    "$@"
  fi
}

# check_gcloud: fail early, with a message, when gcloud is needed and missing.
check_gcloud() {
  if [[ $DRY_RUN != 1 ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk) or use --dry-run"
  fi
}

# remote_cd: the remote shell fragment that enters REMOTE_DIR from the home directory.
remote_cd() {
  printf 'cd && cd %q' "$REMOTE_DIR"
}

# bucket_url BUCKET: gs://BUCKET without a trailing slash (BUCKET may already start with gs://).
bucket_url() {
  local bucket=${1%/}
  printf 'gs://%s' "${bucket#gs://}"
}

# maskgen writes its workdir through the file system, and a multi-host run needs one directory that
# every worker shares: setup.sh/mount.sh mount bucket B with Cloud Storage FUSE (gcsfuse) at
# MOUNT_ROOT/B on every worker, and launch.sh --bucket B puts the workdir at MOUNT_ROOT/B/NAME.
MOUNT_ROOT="${MASKGEN_TPU_MOUNT_ROOT:-/gcs}"
MOUNT_ROOT=${MOUNT_ROOT%/}

# check_bucket: sets BUCKET to the bare bucket name (it may be given as gs://B or B/); dies unless
# it is a bucket name (no path: the whole bucket is mounted).
check_bucket() {
  local given=$BUCKET
  BUCKET=${BUCKET%/}
  BUCKET=${BUCKET#gs://}
  if [[ ! $BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]]; then
    die "--bucket takes a bucket name, B or gs://B (3-222 characters of a-z 0-9 . _ -, no path), got '$given'"
  fi
}

# mount_command: the remote one-line script that mounts BUCKET at MOUNT_ROOT/BUCKET on a worker.
# It installs gcsfuse from Google's apt repository if missing (TPU VM images are Ubuntu), and
# does nothing if something is already mounted there (rerunning is safe).
mount_command() {
  local bucket_q mount_q repo keyring=/usr/share/keyrings/cloud.google.asc
  bucket_q="$(printf '%q' "$BUCKET")"
  mount_q="$(printf '%q' "$MOUNT_ROOT/$BUCKET")"
  repo="https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main"
  printf '%s' "set -e -o pipefail; if ! command -v gcsfuse >/dev/null; then echo \"\$(hostname): installing gcsfuse\"" \
    "; curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee $keyring >/dev/null" \
    "; echo \"deb [signed-by=$keyring] $repo\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null" \
    "; sudo apt-get update -qq; sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse; fi" \
    "; if mountpoint -q $mount_q; then echo \"\$(hostname): $mount_q is already mounted\"" \
    "; else sudo mkdir -p $mount_q; sudo chown \"\$(id -un)\" $mount_q; gcsfuse --implicit-dirs $bucket_q $mount_q" \
    "; echo \"\$(hostname): mounted gs://$BUCKET at $mount_q\"; fi"
}

# Default per-worker log (relative to REMOTE_DIR) written by launch.sh and read by logs.sh/stop.sh.
# shellcheck disable=SC2034  # read by the sourcing scripts
LOG_FILE="${MASKGEN_TPU_LOG:-logs/train.log}"

# pid_file LOG: where launch.sh keeps the run's process id, next to its log.
pid_file() {
  printf '%s.pid' "${1%.log}"
}
