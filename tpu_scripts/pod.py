#!/usr/bin/env python3
"""Cloud TPU pod slices for itjax: create, set up every worker, launch `itjax train` on all, logs, stop, delete.

    python3 tpu_scripts/pod.py [--name N --zone Z --accelerator_type T ...] [--dry_run] COMMAND [...]

Commands: create (a queued resource), wait (until ACTIVE), status, setup (install this checkout or a
git clone, with the `tpu` extra, on every worker; optionally mount a GCS bucket with gcsfuse), launch
(the same `itjax train ...` on every worker, in the background, one log file per worker), logs (stream
worker 0's log, or collect every worker's), stop (SIGTERM: the trainer saves a checkpoint and exits),
delete, recreate (after a preemption: delete, create, wait, setup, launch) and ssh (any command on all
workers). Settings come from flags or the environment variables named in `--help`. With `--dry_run`
the exact commands are printed, one per line, and nothing runs. Standard library only, so it runs
wherever `gcloud` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Generation (as gcloud names accelerator types) -> TPU VM runtime (software) version for JAX.
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
            "v6e": "v2-alpha-tpuv6e"}
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}  # gcloud counts v4/v5p types in TensorCores
SINGLE_HOST_SIZES = {"v5litepod": (1, 4, 8), "v6e": (1, 4, 8)}  # v5e/v6e hosts of up to 8 chips
REMOTE_DIR = "itjax"  # the checkout on each worker, relative to the home directory
LOG = "itjax-train.log"  # each worker's log, in its home directory
PID = "itjax-train.pid"
TARBALL = "itjax-src.tar.gz"
EXCLUDES = (".venv", ".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")
ENV = {"name": "TPU_NAME", "zone": "ZONE", "project": "PROJECT", "accelerator_type": "ACCELERATOR_TYPE",
       "runtime_version": "RUNTIME_VERSION", "spot": "SPOT", "preemptible": "PREEMPTIBLE", "bucket": "BUCKET",
       "mount_point": "MOUNT_POINT", "git_url": "GIT_URL", "git_ref": "GIT_REF", "python": "TPU_PYTHON"}


class PodError(ValueError):
  """A configuration mistake; printed as one line naming the flag (and its environment variable)."""


def parse_accelerator(accelerator_type: str) -> tuple[str, int]:
  """("v4", 32) from "v4-32"; "v5e-N" is accepted for gcloud's "v5litepod-N". Raises PodError otherwise."""
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", accelerator_type or "")
  if not m:
    raise PodError(f"--accelerator_type={accelerator_type!r} (or ACCELERATOR_TYPE): expected a Cloud TPU type such "
                   "as v4-32, v5p-128, v5litepod-16 or v6e-64")
  gen, size = ("v5litepod" if m.group(1) == "v5e" else m.group(1)), int(m.group(2))
  chips, rem = divmod(size, CORES_PER_CHIP[gen])
  if gen in ("v4", "v5p"):
    ok = not rem and size >= 8 and chips % 4 == 0
  else:
    ok = size in SINGLE_HOST_SIZES[gen] or (size >= 16 and size & (size - 1) == 0 and size <= 256)
  if not ok:
    sizes = "8, 16, 32, 64, ... TensorCores" if gen in ("v4", "v5p") else "1, 4, 8, 16, 32, ... 256 chips"
    raise PodError(f"--accelerator_type={accelerator_type!r} (or ACCELERATOR_TYPE): {gen} slices have {sizes}")
  return gen, size


def num_workers(accelerator_type: str) -> int:
  """TPU VM hosts in the slice: one per 4 chips, except v5e/v6e slices of up to 8 chips (one host)."""
  gen, size = parse_accelerator(accelerator_type)
  chips = size // CORES_PER_CHIP[gen]
  if gen in SINGLE_HOST_SIZES and size in SINGLE_HOST_SIZES[gen]:
    return 1
  return max(1, chips // 4)


def _truthy(value) -> bool:
  return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class Pod:
  """One TPU slice (a queued resource and its node, both named `name`) and how to reach its workers."""

  name: str
  zone: str
  accelerator_type: str
  project: str | None = None
  runtime_version: str | None = None
  spot: bool = False
  preemptible: bool = False

  def __post_init__(self):
    if not self.name:
      raise PodError("--name (or TPU_NAME) is required: the name of the queued resource and its TPU VM")
    if not self.zone:
      raise PodError("--zone (or ZONE) is required, e.g. us-central2-b for v4, us-west4-a for v5e")
    parse_accelerator(self.accelerator_type)
    if self.spot and self.preemptible:
      raise PodError("--spot and --preemptible (SPOT, PREEMPTIBLE) exclude each other; Spot is the newer kind")

  @property
  def generation(self) -> str:
    return parse_accelerator(self.accelerator_type)[0]

  @property
  def gcloud_accelerator_type(self) -> str:
    gen, size = parse_accelerator(self.accelerator_type)
    return f"{gen}-{size}"

  @property
  def runtime(self) -> str:
    return self.runtime_version or RUNTIMES[self.generation]

  def _where(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

  def create(self) -> list[str]:
    """Queues the slice: Spot (`--spot`), preemptible (alpha `--best-effort`) or on-demand."""
    alpha = ["alpha"] if self.preemptible else []
    kind = ["--spot"] if self.spot else ["--best-effort"] if self.preemptible else []
    return ["gcloud", *alpha, "compute", "tpus", "queued-resources", "create", self.name, f"--node-id={self.name}",
            f"--accelerator-type={self.gcloud_accelerator_type}", f"--runtime-version={self.runtime}", *kind,
            *self._where()]

  def describe(self, state_only: bool = True) -> list[str]:
    fmt = ["--format=value(state.state)"] if state_only else []
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", self.name, *fmt, *self._where()]

  def delete(self) -> list[str]:
    """Deletes the queued resource and (`--force`) its TPU VM."""
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", self.name, "--force", "--quiet",
            *self._where()]

  def ssh(self, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name, f"--worker={worker}", f"--command={command}",
            *self._where()]

  def scp(self, src: str, dst: str, worker: str = "all", recurse: bool = False) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", *(["--recurse"] if recurse else []), src, dst,
            f"--worker={worker}", *self._where()]


def pack_command(source: str, tarball: str) -> list[str]:
  """A tarball of the checkout without virtualenvs, runs and caches."""
  return ["tar", "-czf", tarball, *(f"--exclude=./{e}" if "*" not in e else f"--exclude={e}" for e in EXCLUDES),
          "-C", source, "."]


def setup_script(*, python: str = "python3.11", git_url: str | None = None, git_ref: str | None = None,
                 bucket: str | None = None, mount_point: str = "/mnt/itjax") -> str:
  """What every worker runs: Python 3.11, the source (unpacked tarball or git clone), a venv with itjax[tpu]."""
  steps = [f"(command -v {python} >/dev/null || (sudo apt-get update -qq && "
           f"sudo apt-get install -y -qq {python} {python}-venv))"]
  if git_url:
    steps.append(f"(test -d {REMOTE_DIR}/.git || git clone -q {shlex.quote(git_url)} {REMOTE_DIR})")
    if git_ref:  # a branch, tag or commit
      steps.append(f"git -C {REMOTE_DIR} fetch -q origin {shlex.quote(git_ref)}")
      steps.append(f"git -C {REMOTE_DIR} checkout -q FETCH_HEAD")
  else:
    steps.append(f"mkdir -p {REMOTE_DIR} && tar -xzf {TARBALL} -C {REMOTE_DIR}")
  steps.append(f"cd {REMOTE_DIR} && {python} -m venv .venv && .venv/bin/pip install -q -U pip && "
               ".venv/bin/pip install -q -e '.[tpu]'")
  if bucket:
    bucket = bucket.removeprefix("gs://").rstrip("/")
    steps.append(
        "(command -v gcsfuse >/dev/null || (curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | "
        "sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && echo \"deb "
        "[signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt "
        "gcsfuse-$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && "
        "sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse))")
    steps.append(f"sudo mkdir -p {mount_point} && sudo chown $USER {mount_point} && "
                 f"(mountpoint -q {mount_point} || gcsfuse --implicit-dirs --rename-dir-limit=1000000 "
                 f"{shlex.quote(bucket)} {mount_point})")
  return " && ".join(steps)


def launch_script(train_args: Sequence[str], env: Sequence[str] = ()) -> str:
  """Starts `itjax train ARGS` in the background on a worker: its log and pid in the home directory."""
  for e in env:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", e):
      raise PodError(f"--env {e!r}: expected NAME=VALUE")
  variables = " ".join(shlex.quote(e) for e in ("TF_CPP_MIN_LOG_LEVEL=3", *env))
  return (f"cd {REMOTE_DIR} && (test ! -s ~/{PID} || ! kill -0 $(cat ~/{PID}) 2>/dev/null || "
          f"(echo 'itjax train is already running on '$(hostname) >&2; exit 1)) && "
          f"{{ nohup env {variables} .venv/bin/itjax train {shlex.join(train_args)} > ~/{LOG} 2>&1 < /dev/null & "
          f"echo $! > ~/{PID}; }}")


def stop_script() -> str:
  """SIGTERM to the trainer: it saves the current step (all workers agree on it) and exits 75 (preempted)."""
  return f"test -s ~/{PID} && kill -TERM $(cat ~/{PID}) 2>/dev/null; true"


def plan(args: argparse.Namespace) -> list[list[str]]:
  """The commands a subcommand runs, in order (what --dry_run prints)."""
  pod = Pod(name=args.name, zone=args.zone, accelerator_type=args.accelerator_type, project=args.project,
            runtime_version=args.runtime_version, spot=_truthy(args.spot), preemptible=_truthy(args.preemptible))
  c = args.command
  if c == "create":
    return [pod.create()]
  if c in ("wait", "status"):
    return [pod.describe(state_only=c == "wait")]
  if c == "delete":
    return [pod.delete()]
  if c == "setup":
    return setup_plan(pod, args)
  if c == "launch":
    return [pod.ssh(launch_script(_train_args(args), args.env))]
  if c == "stop":
    return [pod.ssh(stop_script())]
  if c == "logs":
    if args.collect:
      return [["mkdir", "-p", args.collect]] + [
          pod.scp(f"{pod.name}:{LOG}", os.path.join(args.collect, f"worker-{i}.log"), worker=str(i))
          for i in range(num_workers(pod.accelerator_type))]
    return [pod.ssh(f"tail -n {args.lines} {'-F ' if args.follow else ''}~/{LOG}", worker=str(args.worker))]
  if c == "ssh":
    return [pod.ssh(args.remote_command, worker=args.worker)]
  if c == "recreate":
    return ([pod.delete(), pod.create(), pod.describe()] + setup_plan(pod, args)
            + [pod.ssh(launch_script(_train_args(args), args.env))])
  raise PodError(f"unknown command {c!r}")


def setup_plan(pod: Pod, args: argparse.Namespace) -> list[list[str]]:
  script = setup_script(python=args.python, git_url=args.git_url, git_ref=args.git_ref, bucket=args.bucket,
                        mount_point=args.mount_point)
  if args.git_url:
    return [pod.ssh(script)]
  tarball = os.path.join(args.tmp_dir, TARBALL)
  return [pack_command(args.source, tarball), pod.scp(tarball, f"{pod.name}:{TARBALL}"), pod.ssh(script)]


def _train_args(args: argparse.Namespace) -> list[str]:
  train = list(args.train_args)
  if train[:1] == ["--"]:
    train = train[1:]
  if train[:1] == ["train"]:
    train = train[1:]
  if not train:
    raise PodError(f"{args.command}: give the itjax train flags after --, e.g. -- --gin_file=... --model_dir=...")
  return train


def build_parser() -> argparse.ArgumentParser:
  env = os.environ
  p = argparse.ArgumentParser(prog="pod.py", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--name", default=env.get("TPU_NAME"), help="queued resource and TPU VM name [TPU_NAME]")
  p.add_argument("--zone", default=env.get("ZONE"), help="e.g. us-central2-b [ZONE]")
  p.add_argument("--project", default=env.get("PROJECT"), help="GCP project; default: gcloud's [PROJECT]")
  p.add_argument("--accelerator_type", default=env.get("ACCELERATOR_TYPE"),
                 help="v4-32, v5p-128, v5litepod-16, v6e-64, ... [ACCELERATOR_TYPE]")
  p.add_argument("--runtime_version", default=env.get("RUNTIME_VERSION"),
                 help=f"TPU VM software version; default by generation {RUNTIMES} [RUNTIME_VERSION]")
  p.add_argument("--spot", action="store_const", const="1", default=env.get("SPOT", ""),
                 help="Spot capacity: cheaper, may be preempted [SPOT=1]")
  p.add_argument("--preemptible", action="store_const", const="1", default=env.get("PREEMPTIBLE", ""),
                 help="preemptible (queued --best-effort, gcloud alpha) [PREEMPTIBLE=1]")
  p.add_argument("--dry_run", action="store_true", help="print the commands, one per line; run nothing")
  sub = p.add_subparsers(dest="command", required=True)
  sub.add_parser("create", help="queue the slice (gcloud compute tpus queued-resources create)")
  w = sub.add_parser("wait", help="poll until the queued resource is ACTIVE")
  w.add_argument("--timeout_s", type=float, default=3600.0)
  sub.add_parser("status", help="the queued resource's state")
  sub.add_parser("delete", help="delete the queued resource and its TPU VM")
  for name, help_ in (("setup", "install itjax[tpu] on every worker"),
                      ("recreate", "after a preemption: delete, create, wait, setup, launch (resumes)")):
    s = sub.add_parser(name, help=help_)
    s.add_argument("--source", default=REPO, help="checkout to copy (default: this one)")
    s.add_argument("--git_url", default=env.get("GIT_URL"), help="clone this instead of copying [GIT_URL]")
    s.add_argument("--git_ref", default=env.get("GIT_REF"), help="branch, tag or commit to check out [GIT_REF]")
    s.add_argument("--python", default=env.get("TPU_PYTHON", "python3.11"), help="interpreter [TPU_PYTHON]")
    s.add_argument("--bucket", default=env.get("BUCKET"),
                   help="GCS bucket to mount with gcsfuse on every worker (for MODEL_DIR) [BUCKET]")
    s.add_argument("--mount_point", default=env.get("MOUNT_POINT", "/mnt/itjax"), help="[MOUNT_POINT]")
    s.add_argument("--tmp_dir", default="/tmp", help="where the source tarball is written locally")
    if name == "recreate":
      s.add_argument("--timeout_s", type=float, default=3600.0)
  sub.add_parser("launch", help="run `itjax train ARGS` on every worker in the background")
  for name in ("launch", "recreate"):
    s = sub.choices[name]
    s.add_argument("--env", action="append", default=[], help="NAME=VALUE for the trainer (repeatable)")
    s.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the itjax train flags")
  lg = sub.add_parser("logs", help="stream worker 0's log, or --collect every worker's into a folder")
  lg.add_argument("--worker", type=int, default=0)
  lg.add_argument("--lines", type=int, default=100)
  lg.add_argument("--follow", "-f", action="store_true", help="keep streaming (tail -F)")
  lg.add_argument("--collect", default=None, metavar="DIR", help="copy every worker's log to DIR/worker-<i>.log")
  sub.add_parser("stop", help="SIGTERM the trainer on every worker (it saves a checkpoint, then exits)")
  sh = sub.add_parser("ssh", help="run a command on the workers")
  sh.add_argument("--worker", default="all")
  sh.add_argument("remote_command", help="the shell command")
  return p


def _wait_active(cmd: list[str], timeout_s: float) -> None:
  deadline = time.time() + timeout_s
  while True:
    state = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    print(f"pod.py: queued resource state: {state}", file=sys.stderr)
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDING", "SUSPENDED"):
      raise PodError(f"the queued resource is {state}: `pod.py delete` then `pod.py create` (or `recreate`)")
    if time.time() > deadline:
      raise PodError(f"not ACTIVE after {timeout_s:.0f}s (state {state}); run `pod.py wait` again later")
    time.sleep(30)


def run(argv: Sequence[str]) -> int:
  args = build_parser().parse_args(argv)
  commands = plan(args)
  if args.dry_run:
    for cmd in commands:
      print(shlex.join(cmd))
    return 0
  for i, cmd in enumerate(commands):
    print(f"+ {shlex.join(cmd)}", file=sys.stderr)
    if "--format=value(state.state)" in cmd:  # wait, recreate: poll until ACTIVE
      _wait_active(cmd, args.timeout_s)
    else:  # recreate's delete may find nothing left to delete
      subprocess.run(cmd, check=not (args.command == "recreate" and i == 0))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  try:
    return run(sys.argv[1:] if argv is None else argv)
  except PodError as e:
    print(f"pod.py: error: {e}", file=sys.stderr)
    return 2
  except subprocess.CalledProcessError as e:
    print(f"pod.py: error: command failed with status {e.returncode}: {shlex.join(e.cmd)}", file=sys.stderr)
    return 1
  except FileNotFoundError as e:
    print(f"pod.py: error: {e.filename} not found (install the Google Cloud CLI: gcloud)", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
