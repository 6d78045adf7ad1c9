"""The over-steps plot appears when several step checkpoints are evaluated; it is a real PNG."""

from itjax.eval import figures


def _summary(cks):
  return {"held-out": {"overall": {"exact_match": {ck: float(i) for i, ck in enumerate(cks)}},
                       "clusters": [{"cluster": "nli", "scores": {"exact_match": {ck: 1.0 for ck in cks}}}]}}


def test_over_steps_plot_needs_two_steps(tmp_path):
  two = ["init", "step_10"]
  assert figures.over_steps(_summary(two), "exact_match", two, str(tmp_path / "a.png")) is None
  cks = ["step_10", "step_20", "step_30"]
  path = figures.over_steps(_summary(cks), "exact_match", cks, str(tmp_path / "b.png"))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  bars = figures.cluster_bars(_summary(cks), "exact_match", cks, str(tmp_path / "c.png"))
  assert open(bars, "rb").read(4) == b"\x89PNG"
