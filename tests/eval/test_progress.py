"""Long evaluation phases say how far they got: at most every 10 s, with rows done, elapsed time and an ETA."""

import logging

from itjax.data.vocab import REGISTERED
from itjax.eval import predict
from itjax.eval.predict import Progress, duration
from itjax.eval.rank import rank_classify
from itjax.models.interface import DecoderOnly
from tests.eval.test_rank import PrefersBytes, _row


def test_progress_lines_are_throttled_and_estimate_the_rest():
  now, lines = [0.0], []
  bar = Progress("eval held-out: generation", 5120, clock=lambda: now[0], emit=lines.append)
  for done, t in ((640, 5.0), (1280, 41.0), (1920, 45.0), (2560, 52.0), (5120, 90.0)):
    now[0] = t
    bar.update(done, "flan_rte_zs_opt")
  bar.finish()
  assert lines == ["eval held-out: generation 1,280/5,120 rows (25%), 41 s, ETA 2 min (flan_rte_zs_opt)",
                   "eval held-out: generation 2,560/5,120 rows (50%), 52 s, ETA 52 s (flan_rte_zs_opt)",
                   "eval held-out: generation 5,120 rows done in 2 min"]
  assert duration(3 * 3600 + 5 * 60) == "3 h 05 min"


def test_a_short_loop_says_nothing():
  lines = []
  bar = Progress("x", 10, emit=lines.append)
  bar.update(5)
  bar.finish()
  assert not lines


def test_rank_classification_reports_progress_per_batch(caplog, monkeypatch):
  monkeypatch.setattr(predict, "PROGRESS_EVERY_S", 0.0)
  caplog.set_level(logging.INFO, logger="itjax")
  liked = tuple(REGISTERED.encode("yes")) + (REGISTERED.eos_id,)
  rows = [dict(_row(f"Q{i}? ", ["no", "yes"], "yes"), task=f"t{i}") for i in range(3)]
  out = rank_classify(DecoderOnly(PrefersBytes(liked)), {}, rows, REGISTERED, batch_size=2,
                      progress="eval s: rank classification")
  assert [o["option"] for o in out] == ["yes"] * 3
  lines = [r.getMessage() for r in caplog.records if r.name == "itjax"]
  assert lines[0].startswith("eval s: rank classification 1/3 rows with options (33%)") and "(t0)" in lines[0]
  assert "2/3 rows with options (67%)" in lines[1] and "(t1)" in lines[1]
  assert lines[-1].startswith("eval s: rank classification 3 rows with options done in")
