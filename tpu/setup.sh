#!/usr/bin/env bash
# Install maskgen on every worker of a TPU VM slice: get the code (git or a local copy), make a venv,
# pip install -e '.[tpu,tfds]'; with --bucket, also mount the run bucket on every worker (gcsfuse).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/setup.sh --name NAME --zone ZONE (--repo-url URL [--ref REF] | --source DIR) [--bucket B] [options]

Install maskgen on every worker (`gcloud compute tpus tpu-vm ssh NAME --worker=all`):
  --repo-url URL: clone URL into REMOTE_DIR on each worker (or fetch, if already cloned) and check
                  out REF;
  --source DIR:   pack the local checkout DIR (without .git, venvs, caches, ./runs) into a tarball,
                  copy it to every worker with `gcloud compute tpus tpu-vm scp --worker=all` and
                  unpack it into REMOTE_DIR (replacing what was there, keeping .venv and logs).
Then, on each worker: a venv at REMOTE_DIR/.venv made by uv (installed with pip --user if missing;
uv fetches the requested Python if the image lacks it: jax needs Python >= 3.11) and
`uv pip install -e '.[EXTRAS]'`. Rerunning updates the code and the install.

With --bucket B, a second `ssh --worker=all` mounts the Cloud Storage bucket B at /gcs/B on every
worker with Cloud Storage FUSE (the same command as tpu/mount.sh --bucket B): it installs gcsfuse
from Google's apt repository if missing, then `gcsfuse --implicit-dirs B /gcs/B`, unless /gcs/B is
already a mount point. maskgen writes workdirs through the file system, and a multi-host run needs
one workdir that every worker shares and that outlives the workers: tpu/launch.sh --bucket B uses
/gcs/B/NAME. Mounts do not survive a reboot of a worker; rerun setup.sh (or mount.sh) after one.

Options (default from the environment variable in brackets):
  --name NAME          TPU VM name                                   [MASKGEN_TPU_NAME]
  --zone ZONE          zone                                          [MASKGEN_TPU_ZONE]
  --project PROJECT    GCP project (default: gcloud's config)        [MASKGEN_TPU_PROJECT]
  --repo-url URL       git URL to clone on the workers               [MASKGEN_TPU_REPO_URL]
  --ref REF            branch, tag or commit to check out            [MASKGEN_TPU_REF, HEAD = default branch]
  --source DIR         local directory to copy instead of cloning
  --remote-dir DIR     install directory on the workers, relative to home [MASKGEN_TPU_REMOTE_DIR, maskgen]
  --python VERSION     Python for the venv (a version or a path)    [MASKGEN_TPU_PYTHON, 3.11]
  --extras LIST        pip extras                                    [MASKGEN_TPU_EXTRAS, tpu,tfds]
  --with PACKAGE       one more pip requirement to install (repeatable)
  --bucket B           also mount gs://B at /gcs/B on every worker    [MASKGEN_TPU_BUCKET]
  --dry-run            print the commands instead of running them
  -h, --help           this help
The mount root /gcs can be changed with MASKGEN_TPU_MOUNT_ROOT (mount.sh and launch.sh read it too).

Examples:
  tpu/setup.sh --name mg-v5e16 --zone us-west4-a --repo-url https://github.com/ORG/maskgen.git --ref main \
      --bucket my-bucket
  tpu/setup.sh --name mg-v5e16 --zone us-west4-a --source . --bucket my-bucket
EOF
}

REPO_URL="${MASKGEN_TPU_REPO_URL:-}"
REF="${MASKGEN_TPU_REF:-HEAD}"
SOURCE=""
PYTHON_VERSION="${MASKGEN_TPU_PYTHON:-3.11}"
EXTRAS="${MASKGEN_TPU_EXTRAS:-tpu,tfds}"
REMOTE_TARBALL="maskgen-src.tar.gz"
WITH=()
BUCKET="${MASKGEN_TPU_BUCKET:-}"

normalize_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repo-url) need_value "$@"; REPO_URL=$2; shift 2 ;;
    --ref) need_value "$@"; REF=$2; shift 2 ;;
    --source) need_value "$@"; SOURCE=$2; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR=$2; shift 2 ;;
    --python) need_value "$@"; PYTHON_VERSION=$2; shift 2 ;;
    --extras) need_value "$@"; EXTRAS=$2; shift 2 ;;
    --with) need_value "$@"; WITH+=("$2"); shift 2 ;;
    --bucket) need_value "$@"; BUCKET=$2; shift 2 ;;
    *) common_flag "$@"; shift "$SHIFT_BY" ;;
  esac
done

require_slice
if [[ -n $SOURCE && -n $REPO_URL ]]; then
  die "give either --repo-url or --source, not both"
fi
if [[ -z $SOURCE && -z $REPO_URL ]]; then
  die "--repo-url (or MASKGEN_TPU_REPO_URL) or --source is required"
fi
if [[ -n $SOURCE && ! -f $SOURCE/setup.py ]]; then
  die "--source $SOURCE is not a maskgen checkout (no setup.py there)"
fi
require "$REMOTE_DIR" --remote-dir MASKGEN_TPU_REMOTE_DIR
[[ $EXTRAS =~ ^[A-Za-z0-9_,-]*$ ]] || die "--extras takes a comma-separated list of names, got '$EXTRAS'"
if [[ -n $BUCKET ]]; then
  check_bucket
fi
check_gcloud
location_flags

# The remote script, one line; every user-provided value goes through printf %q.
remote_dir_q="$(printf '%q' "$REMOTE_DIR")"
if [[ -n $REPO_URL ]]; then
  get_code="cd && if [ ! -d $remote_dir_q/.git ]; then git clone --quiet $(printf '%q' "$REPO_URL") $remote_dir_q; fi"
  get_code+=" && $(remote_cd) && git fetch --quiet origin $(printf '%q' "$REF") && git checkout --quiet --detach FETCH_HEAD"
else
  get_code="cd && mkdir -p $remote_dir_q"
  get_code+=" && find $remote_dir_q -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +"
  get_code+=" && tar -xzf $REMOTE_TARBALL -C $remote_dir_q && rm -f $REMOTE_TARBALL && $(remote_cd)"
fi
install="export PATH=\"\$HOME/.local/bin:\$PATH\""
install+=" && { command -v uv >/dev/null || python3 -m pip install --user --quiet uv; }"
install+=" && { [ -x .venv/bin/python ] || uv venv --quiet --python $(printf '%q' "$PYTHON_VERSION") .venv; }"
install+=" && uv pip install --quiet --python .venv/bin/python -e '.[$EXTRAS]'"
for requirement in ${WITH[@]+"${WITH[@]}"}; do
  install+=" $(printf '%q' "$requirement")"
done
install+=" && .venv/bin/maskgen --help >/dev/null && echo \"maskgen installed on \$(hostname)\""
remote="set -e; $get_code && $install"

if [[ -n $SOURCE ]]; then
  workdir_local="$(mktemp -d "${TMPDIR:-/tmp}/maskgen-setup.XXXXXX")"
  trap 'rm -rf "$workdir_local"' EXIT
  tarball="$workdir_local/$REMOTE_TARBALL"
  run tar -czf "$tarball" --exclude=.git --exclude=.venv --exclude=venv --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.pytest_cache --exclude=./runs -C "$SOURCE" .
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:$REMOTE_TARBALL" --worker=all "${LOCATION[@]}"
fi
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$remote"
if [[ -n $BUCKET ]]; then
  run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$(mount_command)"
fi
