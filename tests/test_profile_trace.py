"""benchmarks/profile_trace.py: trace events grouped into op kinds, per step."""

import gzip
import json

import pytest

from benchmarks import profile_trace


@pytest.mark.parametrize('name, kind', [
    ('ynn_fusion.346', 'matrix multiplication'),
    ('dot.12', 'matrix multiplication'),
    ('copy.3', 'layout copies / transposes'),
    ('copy_bitcast_fusion.12', 'layout copies / transposes'),
    ('transpose_copy_fusion', 'layout copies / transposes'),
    ('gather_bitcast_fusion.3', 'gathers (e.g. beam reordering)'),
    ('gather.1', 'gathers (e.g. beam reordering)'),
    ('broadcast_add_fusion.2', 'other fusions (elementwise, reductions)'),
    ('wrapped_exponential', 'other fusions (elementwise, reductions)'),
    ('all-reduce', 'rest (control flow, collectives, RNG keys)'),
])
def test_op_kind(name, kind):
  assert profile_trace.op_kind(name) == kind


def test_summarize_sums_ops_per_step_and_skips_enclosing_events(tmp_path):
  events = [
      {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 9_000},  # Encloses the ops.
      {'ph': 'X', 'name': '$api.py:2479 block_until_ready', 'dur': 9_000},
      {'ph': 'X', 'name': 'while.12', 'dur': 6_000},  # A loop's event encloses its body's.
      {'ph': 'X', 'name': 'end: ynn_fusion.1', 'dur': 1},  # Marks an op's end.
      {'ph': 'X', 'name': 'ynn_fusion.1', 'dur': 3_000},
      {'ph': 'X', 'name': 'ynn_fusion.1', 'dur': 1_000},
      {'ph': 'X', 'name': 'copy.7', 'dur': 500},
      {'ph': 'X', 'name': 'add_fusion', 'dur': 1_500},
      {'ph': 'i', 'name': 'copy.7', 'dur': 99_000},  # An instant event, not a duration.
  ]
  path = tmp_path / 'host.trace.json.gz'
  with gzip.open(path, 'wt') as f:
    json.dump({'traceEvents': events}, f)
  by_kind, per_op = profile_trace.summarize(str(path), steps=2)
  assert by_kind == {'matrix multiplication': 2.0, 'layout copies / transposes': 0.25,
                     'other fusions (elementwise, reductions)': 0.75}
  assert per_op == [('ynn_fusion.1', 2.0), ('add_fusion', 0.75), ('copy.7', 0.25)]


_HLO = '''
fused_computation.3 {
  %p = f32[8,4]{1,0} parameter(0)
}
ENTRY %main.9 {
  %copy_bitcast_fusion.12 = f32[4,8]{1,0} fusion(%p), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(train_step)/transpose(jvp(Transformer))/Transformer.encode/encoder_layer_2/mlp_add_norm/Dropout_0/div" stack_frame_id=7}
  %copy.4 = f32[4,8]{1,0} copy(%p), metadata={op_name="jit(train_step)/Transformer.encode/encoder_layer_10/self_attention/transpose"}
  %copy.5 = f32[4,8]{1,0} copy(%p), metadata={op_name="jit(train_step)/Transformer.encode/encoder_layer_0/self_attention/transpose;jit(train_step)/Transformer.encode/encoder_layer_0/self_attention/reshape"}
  ROOT %ynn_fusion.1 = f32[8,8]{1,0} fusion(%copy.4), kind=kCustom
}
'''


def test_op_sources_folds_layer_numbers_drops_the_jit_and_keeps_the_first_fused_op():
  sources = profile_trace.op_sources(_HLO)
  assert sources == {
      'copy_bitcast_fusion.12':
          'transpose(jvp(Transformer))/Transformer.encode/encoder_layer_#/mlp_add_norm/Dropout_#/div',
      'copy.4': 'Transformer.encode/encoder_layer_#/self_attention/transpose',
      'copy.5': 'Transformer.encode/encoder_layer_#/self_attention/transpose',
  }


def test_time_by_source_sums_one_kind_per_operation():
  per_op = [('copy.4', 2.0), ('ynn_fusion.1', 9.0), ('copy.5', 1.5),
            ('copy_bitcast_fusion.12', 3.0), ('copy.99', 0.5)]
  got = profile_trace.time_by_source(per_op, profile_trace.op_sources(_HLO),
                                     'layout copies / transposes')
  assert got == [('Transformer.encode/encoder_layer_#/self_attention/transpose', 3.5),
                 ('transpose(jvp(Transformer))/Transformer.encode/encoder_layer_#/mlp_add_norm/'
                  'Dropout_#/div', 3.0),
                 ('unknown (no op_name: XLA inserted it)', 0.5)]
