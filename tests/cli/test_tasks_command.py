"""`itjax tasks list` and `itjax tasks show`."""

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
