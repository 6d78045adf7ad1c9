"""The README walkthrough "Your own mixture from JSONL files", on small generated P3-shaped files."""

import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the film plot acting was long short fine dull bright story scene music".split()


def _write(d, dataset, template, rows):
  with open(os.path.join(d, f"{dataset}_{template}.jsonl"), "w") as f:
    for prompt, completion in rows:
      f.write(json.dumps({"prompt": prompt, "completion": completion + "<|endoftext|>"}) + "\n")


def _data(d):
  r = random.Random(0)
  passages = [" ".join(r.choice(WORDS) for _ in range(r.randint(30, 90))) for _ in range(40)]
  labels = [r.choice(["positive", "negative"]) for _ in passages]
  pairs = list(zip(passages, labels, strict=True))
  _write(d, "imdb", "Movie_Expressed_Sentiment", [(f"{p}\nPositive or negative?\n", y) for p, y in pairs])
  _write(d, "imdb", "Sentiment_with_choices", [(f"Review: {p}\nDid the reviewer like it? yes or no\n",
                                                "yes" if y == "positive" else "no") for p, y in pairs])
  _write(d, "ag_news", "classify", [(f"{p}\nWhich section: World, Sports?\n", r.choice(["World", "Sports"]))
                                    for p in passages])
  _write(d, "xsum", "summarize", [(f"{p}\nSummarize the article.\n", " ".join(p.split()[:5])) for p in passages])


def _itjax(*args, env):
  return subprocess.run([sys.executable, "-m", "itjax.cli", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)


def test_walkthrough_trains_and_reports_per_task_metrics(tmp_path):
  data = tmp_path / "p3"
  data.mkdir()
  _data(data)
  env = {**os.environ, "P3_DIR": str(data), "JAX_PLATFORMS": "cpu"}
  tasks = "--tasks_module=gin_configs/examples/p3_tasks.py"
  out = _itjax("tasks", "list", "p3_", tasks, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "p3_heldout_sentiment_eval" in out.stdout and "p3_imdb_zs_opt" in out.stdout
  model_dir = tmp_path / "run"
  out = _itjax("train", tasks, "--gin_file=gin_configs/examples/p3_heldout.gin", f"--model_dir={model_dir}",
               "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=4", "--gin.eval_settings.max_examples_per_task=2",
               env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((model_dir / "eval" / "heldout" / "report.json").read_text())
  held = report["sets"]["held-out"]
  imdb = next(d for d in held["datasets"] if d["dataset"] == "p3_imdb")
  assert imdb["templates"] == 2  # the two files are templates of one dataset
  assert "rank_accuracy" in imdb["scores"] and "exact_match" in imdb["scores"]
  assert (model_dir / "config.gin").read_text().count("p3_tasks.py") >= 1
