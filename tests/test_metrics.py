"""metrics.py: metrics.jsonl rows, what a resume keeps, and malformed rows named."""

import json

import pytest

from transformer import cli
from transformer import metrics as metrics_lib


def rows_of(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_are_written_in_order_with_sorted_keys(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'tensorboard'), resume_step=0)
  writer.write(1, {'train/loss': 2.5, 'a': 1})
  writer.write(2, {'train/loss': 1.25})
  writer.close()
  path = tmp_path / 'metrics.jsonl'
  assert path.read_text() == ('{"step": 1, "a": 1.0, "train/loss": 2.5}\n'
                              '{"step": 2, "train/loss": 1.25}\n')
  assert metrics_lib.read_rows(str(tmp_path / 'metrics.jsonl')) == rows_of(path)
  assert list((tmp_path / 'tensorboard').iterdir())  # An event file.


def test_resume_drops_only_rows_past_the_resumed_step(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': s, 'x': float(s)} for s in (0, 1, 2, 2, 3, 4)]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  metrics_lib.MetricWriter(str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'tensorboard'), resume_step=2).close()
  assert rows_of(path) == rows[:4]
  metrics_lib.MetricWriter(str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'tensorboard'), resume_step=0).close()  # A fresh start keeps step 0.
  assert rows_of(path) == rows[:1]


def test_half_written_last_row_is_dropped_and_not_appended_to(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x"')
  assert metrics_lib.read_rows(str(tmp_path / 'metrics.jsonl')) == [{'step': 1, 'x': 1.0}]
  writer = metrics_lib.MetricWriter(str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'tensorboard'), resume_step=1)
  writer.write(2, {'x': 3})
  writer.close()
  assert rows_of(path) == [{'step': 1, 'x': 1.0}, {'step': 2, 'x': 3.0}]


def test_malformed_middle_row_is_named_and_the_file_kept(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  text = '{"step": 1}\nnot json\n{"step": 3}\n'
  path.write_text(text)
  with pytest.raises(cli.UserError, match=r'metrics\.jsonl:2 is not a JSON row'):
    metrics_lib.MetricWriter(str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'tensorboard'), resume_step=3)
  assert path.read_text() == text


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'tensorboard'), resume_step=0, enabled=False)
  writer.write(1, {'x': 1})
  writer.close()
  assert not list(tmp_path.iterdir())
  assert metrics_lib.read_rows(str(tmp_path / 'metrics.jsonl')) == []


def test_patience_counts_from_the_last_gain_larger_than_min_delta():
  # The pilot's 3,000-pair baseline after step 2,000 (validation BLEU every 400 steps).
  bleus = [11.06, 11.43, 11.56, 11.62, 11.75, 12.7, 12.78, 13.13, 12.66, 13.28, 12.8, 12.8, 13.6]
  assert metrics_lib.last_improvement(bleus) == 12  # Without min_delta: the maximum.
  # With 0.5: 11.56 is +0.50 (not more), 11.75 +0.69 over 11.06, 12.7 +0.95 over 11.75,
  # 13.28 +0.58 over 12.7; 13.6 is +0.32 over 13.28.
  assert metrics_lib.last_improvement(bleus, 0.5) == 9
  assert metrics_lib.evaluations_since_best(bleus, 0.5) == 3
  assert metrics_lib.evaluations_since_best([1.0, 3.0, 2.0]) == 1
  assert metrics_lib.evaluations_since_best([2.0, 1.0, 2.0]) == 2  # A tie is no gain.
  assert metrics_lib.evaluations_since_best([]) == 0 and metrics_lib.last_improvement([]) == -1
