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
