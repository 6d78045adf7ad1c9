"""`itjax tasks list`, `itjax tasks show` and `itjax tasks quality`."""

import json

from itjax.cli import main


def test_list_shows_tasks_with_clusters_and_mixtures(capsys):
  assert main(["tasks", "list", "proc_"]) == 0
  out = capsys.readouterr().out
  assert "proc_color_nli_zs_opt" in out and "cluster=nli" in out
  assert "proc_heldout_nli " in out and "proc_heldout_nli_eval" in out


def test_show_task_prints_formatted_examples(capsys):
  assert main(["tasks", "show", "proc_color_nli_zs_opt", "-n", "2"]) == 0
  out = capsys.readouterr().out
  assert "clusters=nli" in out and "OPTIONS:\n- yes\n- no" in out
  assert out.count("--- example") == 2


def test_show_mixture_prints_rates_that_sum_to_one(capsys):
  assert main(["tasks", "show", "proc_heldout_nli"]) == 0
  out = capsys.readouterr().out
  rates = [float(line.split()[-1].rstrip("%")) for line in out.splitlines()[1:]]
  assert abs(sum(rates) - 100) < 0.1
  assert "nli" not in "".join(out.splitlines()[1:])


def test_quality_reads_the_splits_the_eval_protocol_reports(capsys, tmp_path):
  out = tmp_path / "q.json"
  argv = ["tasks", "quality", "proc_add_zs_noopt", "--against", "proc_color_nli_zs_opt", "--max_examples", "4",
          "--output", str(out)]
  assert main(argv) == 0
  assert "eval splits read: test, validation" in capsys.readouterr().out
  assert json.loads(out.read_text())["eval_splits"] == ["test", "validation"]
  both = json.loads(out.read_text())["eval_ngrams"]
  assert main([*argv, "--split", "validation"]) == 0
  printed = capsys.readouterr().out
  assert "eval splits read: validation\n" in printed
  assert json.loads(out.read_text())["eval_splits"] == ["validation"]
  assert json.loads(out.read_text())["eval_ngrams"] < both


def test_quality_names_a_split_no_eval_task_has(capsys):
  assert main(["tasks", "quality", "proc_add_zs_noopt", "--against", "proc_color_nli_zs_opt", "--split", "tset"]) == 2
  err = capsys.readouterr().err
  assert "has split 'tset'; they have" in err and "validation" in err and len(err.strip().splitlines()) == 1
