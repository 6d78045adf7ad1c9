"""How a resumed run finds its place in the data (stream_settings.resume): the saved stream state restored, the
batches replayed, or a fresh stream when the saved one cannot continue exactly; counts carry on."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from train_runs import losses, train

from itjax.core.checkpoints import blob_names, read_metadata
from itjax.train.summaries import read_metrics


def _resume_copy(reference, d, step: int) -> None:
  os.makedirs(d / "checkpoints")
  shutil.copytree(reference / "checkpoints" / str(step), d / "checkpoints" / str(step))


def test_every_checkpoint_holds_the_stream_state(reference):
  step_dir = reference / "checkpoints" / "8"
  assert blob_names(str(step_dir)) == ["counts-process-00000-of-00001.json", "shard-00000-of-00001.tfdata"]
  meta = read_metadata(str(step_dir))["data"]
  assert meta == {"batches": 8, "shards": 1, "seed": 0, "state": True}
  counts = json.loads((step_dir / "data" / "counts-process-00000-of-00001.json").read_text())
  assert counts["examples_trained"] == read_metrics(reference)[8]["data/examples_trained"]


def test_resume_restores_the_stream_and_its_counts(reference, tmp_path, capsys):
  d = tmp_path / "run"
  _resume_copy(reference, d, 8)
  assert train(d, "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=2") == 0
  err = capsys.readouterr().err
  assert "data stream: restoring its saved state (1 data shards): continuing exactly at batch 8" in err, err[-2000:]
  assert re.search(r"data stream restored in \d+\.\d s", err)
  ref, got = losses(reference), losses(d)
  assert sorted(got) == [9, 10, 11, 12]
  np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-6)
  # Counts are cumulative: what the resumed run reports at step 12 is what the uninterrupted run reported.
  assert read_metrics(d)[12]["data/examples_trained"] == read_metrics(reference)[12]["data/examples_trained"]


def test_replay_reaches_the_same_batches(reference, tmp_path, capsys):
  d = tmp_path / "run"
  _resume_copy(reference, d, 6)
  assert train(d, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_PERIOD=2", "--gin.stream_settings.resume='replay'") == 0
  assert "restoring its saved state" not in capsys.readouterr().err
  ref, got = losses(reference), losses(d)
  np.testing.assert_allclose([got[7], got[8]], [ref[7], ref[8]], rtol=1e-6)


@pytest.mark.slow
def test_a_shard_count_change_starts_a_fresh_stream_and_says_so(reference, tmp_path, capsys):
  """1 saved shard read as 2: the saved stream cannot continue exactly, so a fresh one (a new seed, logged and
  saved) takes over; the next resume restores that fresh stream exactly."""
  d = tmp_path / "run"
  _resume_copy(reference, d, 8)
  assert train(d, "--gin.TRAIN_STEPS=10", "--gin.CHECKPOINT_PERIOD=2", "--gin.stream_settings.data_shards=2") == 0
  err = capsys.readouterr().err
  assert "the checkpoint read 1 data shards and this run reads 2, so the saved stream cannot continue exactly" in err
  m = re.search(r"data stream: fresh, seed (\d+) \(was 0\): nothing is replayed; within each task's current pass",
                err)
  assert m, err[-3000:]
  assert read_metadata(str(d / "checkpoints" / "10"))["data"]["seed"] == int(m.group(1))
  assert losses(d)[9] != losses(reference)[9]  # other data
  trained = read_metrics(d)[10]["data/examples_trained"] - read_metrics(reference)[8]["data/examples_trained"]
  assert 0 < trained < read_metrics(reference)[8]["data/examples_trained"]  # the counts went on from step 8
  uninterrupted = tmp_path / "uninterrupted"
  _resume_copy(d, uninterrupted, 10)
  assert train(uninterrupted, "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=2") == 0
  assert train(d, "--gin.TRAIN_STEPS=11", "--gin.CHECKPOINT_PERIOD=1") == 0
  capsys.readouterr()  # the next run resumes from 11: the fresh stream's own saved state
  assert train(d, "--gin.TRAIN_STEPS=12", "--gin.CHECKPOINT_PERIOD=1") == 0
  assert "restoring its saved state (2 data shards)" in capsys.readouterr().err
  np.testing.assert_allclose(losses(d)[12], losses(uninterrupted)[12], rtol=1e-6)
