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


def _capture(monkeypatch):
  """The axes each plot saves (bar heights, texts and lines), recorded before the figure is closed."""
  seen = []
  save = figures._save

  def recording(fig, ax, *args):
    seen.append({"heights": [p.get_height() for p in ax.patches], "texts": [t.get_text() for t in ax.texts],
                 "labels": [t.get_text() for t in ax.get_xticklabels()], "lines": len(ax.collections)})
    return save(fig, ax, *args)

  monkeypatch.setattr(figures, "_save", recording)
  return seen


def test_missing_bars_are_not_drawn_as_zero(tmp_path, monkeypatch):
  seen = _capture(monkeypatch)
  summary = {"s": {"clusters": [
      {"cluster": "summarization", "scores": {"rouge1": {"base": None, "tuned": 30.0}}, "baselines": {}},
      {"cluster": "nli", "scores": {"rouge1": {"base": None, "tuned": None}}, "baselines": {}},
      {"cluster": "qa", "scores": {"rouge1": {"base": 10.0, "tuned": 20.0}}, "baselines": {}}]}}
  assert figures.cluster_bars(summary, "rouge1", ["base", "tuned"], str(tmp_path / "a.png"))
  (ax,) = seen
  assert sorted(ax["heights"]) == [10.0, 20.0, 30.0]  # no zero-height bar for the missing score
  assert ax["texts"] == ["n/a"]  # marked instead
  assert [lab.split("\n")[0] for lab in ax["labels"]] == ["summarization", "qa"]  # nli has no ROUGE: left out
  nothing = {"s": {"clusters": [summary["s"]["clusters"][1]]}}
  assert figures.cluster_bars(nothing, "rouge1", ["base", "tuned"], str(tmp_path / "b.png")) is None


def test_rank_bars_draw_the_baselines(tmp_path, monkeypatch):
  seen = _capture(monkeypatch)
  summary = {"s": {"clusters": [{"cluster": "nli", "scores": {"rank_accuracy": {"ck": 60.0}},
                                 "baselines": {"chance": 50.0, "majority": 55.0}}]}}
  figures.cluster_bars(summary, "rank_accuracy", ["ck"], str(tmp_path / "a.png"), baselines=("chance", "majority"))
  assert seen[0]["lines"] == 2


def test_side_by_side_colours_by_primary_metric_and_shows_what_the_model_saw(tmp_path):
  long = "x" * 10_000 + "MIDDLE" + "y" * 10_000
  rows = [{"task": "summ", "template_id": 0, "inputs": "seen prompt", "target": "a b", "metrics": ["rougeLsum"],
           "inputs_untruncated": "HEAD " + long + " TAIL", "inputs_cut_tokens": 1234},
          {"task": "cls", "template_id": 0, "inputs": "q", "target": "yes", "metrics": ["rank_accuracy"]},
          {"task": "mt", "template_id": 0, "inputs": "q", "target": "t", "metrics": ["bleu"]}]
  outputs = {"ck": [{"prediction": "a c", "scores": {"rougeLsum": 50.0, "exact_match": 0.0}},
                    {"prediction": "no", "option": "yes", "scores": {"rank_accuracy": 100.0, "exact_match": 0.0}},
                    {"prediction": "t", "scores": {"sentence_bleu": 0.0, "exact_match": 100.0}}]}
  page = open(figures.side_by_side_html({"s": (rows, outputs, None)}, "t", str(tmp_path / "p.html"))).read()
  cells = page.split("<tr>")[2:]
  assert "class='part' style='background:hsl(60," in cells[0] and "rougeLsum: 50.0" in cells[0]
  assert "class='ok'" in cells[1]  # rank accuracy right, though the generation is not an exact match
  assert "class='bad'" in cells[2] and "sentence_bleu: 0.0" in cells[2]  # BLEU's per-row stand-in
  assert "seen prompt" in cells[0] and "truncated: 1,234 tokens cut" in cells[0]
  assert "<details><summary>untruncated prompt (20,016 characters)" in cells[0]
  assert "HEAD" in cells[0] and "TAIL" in cells[0] and "MIDDLE" not in cells[0] and len(cells[0]) < 6000
  assert "truncated" not in cells[1] and page.count("<tr>") == 1 + 3
