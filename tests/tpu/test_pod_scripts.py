"""tpu_scripts/pod.py: the exact gcloud commands it generates (--dry_run), and its configuration errors."""

import importlib.util
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("pod", os.path.join(REPO, "tpu_scripts", "pod.py"))
pod = sys.modules["pod"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(pod)

V4 = ["--name=itjax-v4", "--zone=us-central2-b", "--accelerator_type=v4-32", "--project=my-project"]
V5E = ["--name=itjax-v5e", "--zone=us-west4-a", "--accelerator_type=v5litepod-16"]
TRAIN = ["--gin_file=gin_configs/examples/tiny_heldout.gin", "--model_dir=/mnt/itjax/runs/tiny_heldout"]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
  for var in pod.ENV.values():
    monkeypatch.delenv(var, raising=False)


def run_dry(capsys, flags, command, *rest) -> list[str]:
  assert pod.main([*flags, "--dry_run", command, *rest]) == 0
  return capsys.readouterr().out.splitlines()


def test_v4_32_spot(capsys):
  w = "--zone=us-central2-b --project=my-project"
  assert run_dry(capsys, [*V4, "--spot"], "create") == [
      "gcloud compute tpus queued-resources create itjax-v4 --node-id=itjax-v4 --accelerator-type=v4-32 "
      f"--runtime-version=tpu-ubuntu2204-base --spot {w}"]
  assert run_dry(capsys, V4, "wait") == [
      f"gcloud compute tpus queued-resources describe itjax-v4 '--format=value(state.state)' {w}"]
  assert run_dry(capsys, V4, "launch", "--", *TRAIN) == [
      "gcloud compute tpus tpu-vm ssh itjax-v4 --worker=all '--command=cd itjax && (test ! -s ~/itjax-train.pid || "
      "! kill -0 $(cat ~/itjax-train.pid) 2>/dev/null || (echo '\"'\"'itjax train is already running on '\"'\"'"
      "$(hostname) >&2; exit 1)) && { nohup env TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/itjax train "
      "--gin_file=gin_configs/examples/tiny_heldout.gin --model_dir=/mnt/itjax/runs/tiny_heldout > "
      f"~/itjax-train.log 2>&1 < /dev/null & echo $! > ~/itjax-train.pid; }}' {w}"]
  assert run_dry(capsys, V4, "logs", "--collect", "logs") == ["mkdir -p logs"] + [
      f"gcloud compute tpus tpu-vm scp itjax-v4:itjax-train.log logs/worker-{i}.log --worker={i} {w}"
      for i in range(4)]  # v4-32: 16 chips, 4 hosts
  assert run_dry(capsys, V4, "logs", "-f") == [
      f"gcloud compute tpus tpu-vm ssh itjax-v4 --worker=0 '--command=tail -n 100 -F ~/itjax-train.log' {w}"]
  assert run_dry(capsys, V4, "stop") == [
      "gcloud compute tpus tpu-vm ssh itjax-v4 --worker=all '--command=test -s ~/itjax-train.pid && kill -TERM "
      f"$(cat ~/itjax-train.pid) 2>/dev/null; true' {w}"]
  assert run_dry(capsys, V4, "delete") == [
      f"gcloud compute tpus queued-resources delete itjax-v4 --force --quiet {w}"]


def test_v5litepod_16_on_demand(capsys):
  w = "--zone=us-west4-a"  # no --project: gcloud's configured one
  assert run_dry(capsys, V5E, "create") == [
      "gcloud compute tpus queued-resources create itjax-v5e --node-id=itjax-v5e --accelerator-type=v5litepod-16 "
      f"--runtime-version=v2-alpha-tpuv5-lite {w}"]
  out = run_dry(capsys, V5E, "setup", "--source=/src/itjax", "--tmp_dir=/tmp/x")
  assert out[0] == ("tar -czf /tmp/x/itjax-src.tar.gz --exclude=./.venv --exclude=./.git --exclude=./runs "
                    "--exclude=./__pycache__ '--exclude=*.egg-info' --exclude=./.pytest_cache "
                    "--exclude=./.ruff_cache -C /src/itjax .")
  assert out[1] == f"gcloud compute tpus tpu-vm scp /tmp/x/itjax-src.tar.gz itjax-v5e:itjax-src.tar.gz --worker=all {w}"
  script = shlex.split(out[2])[7].removeprefix("--command=")
  assert shlex.split(out[2])[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "itjax-v5e"]
  assert script == pod.setup_script()
  assert "tar -xzf itjax-src.tar.gz -C itjax" in script and ".venv/bin/pip install -q -e '.[tpu]'" in script
  assert "gcsfuse" not in script
  subprocess.run(["bash", "-n", "-c", script], check=True)  # valid shell


def test_environment_configuration_and_flag_precedence(capsys, monkeypatch):
  for k, v in {"TPU_NAME": "env-pod", "ZONE": "europe-west4-a", "ACCELERATOR_TYPE": "v5p-128", "PROJECT": "proj",
               "SPOT": "1", "RUNTIME_VERSION": "v2-alpha-tpuv5-custom"}.items():
    monkeypatch.setenv(k, v)
  assert run_dry(capsys, [], "create") == [
      "gcloud compute tpus queued-resources create env-pod --node-id=env-pod --accelerator-type=v5p-128 "
      "--runtime-version=v2-alpha-tpuv5-custom --spot --zone=europe-west4-a --project=proj"]
  assert run_dry(capsys, ["--name=flag-pod"], "status") == [
      "gcloud compute tpus queued-resources describe flag-pod --zone=europe-west4-a --project=proj"]
  assert pod.num_workers("v5p-128") == 16


def test_preemptible_uses_best_effort(capsys):
  assert run_dry(capsys, [*V5E, "--preemptible", "--runtime_version=rt"], "create") == [
      "gcloud alpha compute tpus queued-resources create itjax-v5e --node-id=itjax-v5e "
      "--accelerator-type=v5litepod-16 --runtime-version=rt --best-effort --zone=us-west4-a"]


def test_setup_from_git_with_a_bucket_and_recreate(capsys):
  out = run_dry(capsys, V4, "recreate", "--git_url=https://github.com/me/itjax.git", "--git_ref=v1.0",
                "--bucket=gs://my-bucket", "--env", "TFDS_DATA_DIR=gs://my-bucket/tfds", "--", *TRAIN)
  assert [shlex.split(c)[:6] for c in out] == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "itjax-v4"],
      ["gcloud", "compute", "tpus", "queued-resources", "create", "itjax-v4"],
      ["gcloud", "compute", "tpus", "queued-resources", "describe", "itjax-v4"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "itjax-v4"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "itjax-v4"]]
  setup, launch = (shlex.split(c)[7].removeprefix("--command=") for c in out[3:])
  assert "git clone -q https://github.com/me/itjax.git itjax" in setup
  assert "git -C itjax fetch -q origin v1.0 && git -C itjax checkout -q FETCH_HEAD" in setup
  assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 my-bucket /mnt/itjax" in setup
  assert "nohup env TF_CPP_MIN_LOG_LEVEL=3 TFDS_DATA_DIR=gs://my-bucket/tfds .venv/bin/itjax train" in launch
  for script in (setup, launch):
    subprocess.run(["bash", "-n", "-c", script], check=True)


@pytest.mark.parametrize("accelerator,workers", [("v4-8", 1), ("v4-32", 4), ("v5p-256", 32), ("v5litepod-8", 1),
                                                 ("v5litepod-16", 4), ("v5e-256", 64), ("v6e-64", 16)])
def test_num_workers(accelerator, workers):
  assert pod.num_workers(accelerator) == workers


@pytest.mark.parametrize("argv,message", [
    (["--name=a", "--zone=z", "--accelerator_type=v4-30", "create"],
     "--accelerator_type='v4-30' (or ACCELERATOR_TYPE): v4 slices have 8, 16, 32, 64, ... TensorCores"),
    (["--name=a", "--zone=z", "--accelerator_type=v3-8", "create"],
     "--accelerator_type='v3-8' (or ACCELERATOR_TYPE): expected a Cloud TPU type such as v4-32"),
    (["--name=a", "--zone=z", "--accelerator_type=v5litepod-12", "create"], "v5litepod slices have 1, 4, 8, 16"),
    (["--name=a", "--accelerator_type=v4-8", "create"], "--zone (or ZONE) is required"),
    (["--zone=z", "--accelerator_type=v4-8", "create"], "--name (or TPU_NAME) is required"),
    (["--name=a", "--zone=z", "--accelerator_type=v4-8", "--spot", "--preemptible", "create"], "exclude each other"),
    (["--name=a", "--zone=z", "--accelerator_type=v4-8", "launch"], "give the itjax train flags after --"),
    (["--name=a", "--zone=z", "--accelerator_type=v4-8", "launch", "--env", "1X=2", "--", "--a=b"], "--env '1X=2'"),
])
def test_configuration_errors(capsys, argv, message):
  assert pod.main(["--dry_run", *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("pod.py: error: ") and message in err and len(err.splitlines()) == 1


def test_dry_run_runs_nothing(capsys, monkeypatch):
  def fail(*a, **k):
    raise AssertionError("dry run ran a command")

  monkeypatch.setattr(subprocess, "run", fail)
  assert len(run_dry(capsys, V4, "setup")) == 3


def test_runs_the_planned_commands(capsys, monkeypatch):
  ran = []
  monkeypatch.setattr(subprocess, "run", lambda cmd, check: ran.append((cmd, check)))
  assert pod.main([*V4, "stop"]) == 0
  assert ran == [(pod.plan(pod.build_parser().parse_args([*V4, "stop"]))[0], True)]
