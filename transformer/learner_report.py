"""REPORT.md's "Questions a learner asks": learner.measure's JSON, read and said in words.

Each number comes from the measurements file (or a run folder); each paragraph says what
the number shows next to its control, so a reader can tell content from position, a
sentence's own statistics from its batch-mates', and the cache's saving from its cost.
No JAX here (tests/test_layout.py): report.py calls `lines` and nothing else.
"""

import json
import os
from typing import Optional, Sequence

from scipy import stats

from transformer import significance
from transformer import workdir as workdir_lib

SHOWN_LOOPS = 3  # Looping translations quoted; every skipped line is numbered.
SHOWN_SENTENCES = 3  # Qualifying sentences quoted.


def _ratio(mean: float, sd: Optional[float] = None) -> str:
  """'2.1×' or '2.1× ± 0.4': a weight as a multiple of uniform attention."""
  return f'{mean:.2f}×' + (f' ± {sd:.2f}' if sd is not None else '')


def _run(path: str, experiment: workdir_lib.ExperimentDir) -> str:
  return os.path.relpath(path, experiment.path)


def _entropy_lines(attention: dict, experiment: workdir_lib.ExperimentDir) -> list[str]:
  """The entropy table over the qualifying sentences, and the first one's maps."""
  entropy = attention['entropy_by_layer']
  if not entropy:
    return []
  maps = os.path.join(experiment.LEARNER, experiment.LEARNER_ATTENTION)
  layers = len(next(iter(entropy.values())))
  first = attention['sentences'][0]
  lines = [
      '### What queries, keys and values do', '',
      "Each position's query is scored against every key; the softmax of those scores (one "
      'row of a map) weighs the values that the position reads. How far the rows are from '
      'uniform, as their entropy over log(keys) (1: uniform, 0: one key each; the mean of '
      f"every head and row, then of the {len(attention['sentences'])} sentences read below):",
      '', '| attention | ' + ' | '.join(f'layer {i}' for i in range(layers)) + ' |',
      '|---|' + '---|' * layers]
  for kind, entropies in entropy.items():
    lines.append(f'| {kind} | ' + ' | '.join(f'{e:.2f}' for e in entropies) + ' |')
  last = layers - 1
  lines += [''] + [f'![{kind}]({maps}/{kind}_layer{last}_head0.png)'
                   for kind in ('encoder_self', 'decoder_self', 'cross')]
  return lines + ['', f"(Last layer, head 0, of “{first['source']}” → “{first['translation']}”; "
                  f"all {attention['maps']} maps are in `{maps}/`.)", '']


def _sign_p(above: int, n: int) -> float:
  """Two-sided exact sign test of `above` of `n` sentences against a fair coin: how often
  content and position would split this unevenly if neither led."""
  return stats.binomtest(above, n).pvalue


def _sign_test(above: int, n: int) -> str:
  return f'sign test p={_sign_p(above, n):.3f}'


def _verdict(above: int, n: int, content: str, position: str) -> str:
  """content if the sentences favour content significantly, position if they do not lean
  towards it, and "too few to tell" in between."""
  if above > n / 2 and _sign_p(above, n) < significance.ALPHA:
    return content
  if above > n / 2:
    return (f'More sentences favour content than position, but {n} sentences cannot tell '
            f'the two apart (sign test p ≥ {significance.ALPHA:g}).')
  return position


def _looping_text(attention: dict) -> str:
  looping = attention['looping']
  if not looping:
    return 'No translation of a candidate loops.'
  quoted = '; '.join(f"line {s['line']}: “{s['translation']}”" for s in looping[:SHOWN_LOOPS])
  return (f"Skipped for looping (a word 4-gram repeated), test lines "
          f"{', '.join(str(s['line']) for s in looping)}; for instance {quoted}.")


def attention_lines(attention: dict, experiment: workdir_lib.ExperimentDir) -> list[str]:
  """The verb-and-object reading over many sentences, each ratio beside its control."""
  sentences, by_layer = attention['sentences'], attention['by_layer']
  lines = _entropy_lines(attention, experiment) + [
      "### When it writes a verb's object, does it look at the object?", '',
      'Sentences are picked by a rule (transformer/verb_object.py), not by hand: a French verb '
      'of a fixed list of frequent Bible verbs, followed over at most two determiners by a '
      "noun of a fixed list, whose greedy translation has the verb's English form and then "
      f"the noun's. Read from `{_run(attention['workdir'], experiment)}` (step "
      f"{attention['step']}): of the {attention['split_sentences']:,} test sentences, "
      f"{attention['candidates']} have such a verb and object; {len(attention['looping'])} "
      f"translations loop and are skipped, {attention['untranslated']} lack the English "
      f"words, and **{len(sentences)} qualify**. {_looping_text(attention)}", '']
  if not sentences:
    return lines + ['No sentence qualifies: this model does not translate a verb and its '
                    'object, so its attention says nothing about them.', '']
  quoted = '; '.join(f"“{s['source']}” → “{s['translation']}” ({s['verb']} {s['object']} → "
                     f"{s['english_verb']} {s['english_object']})"
                     for s in sentences[:SHOWN_SENTENCES])
  lines += [
      f'For instance: {quoted}.', '',
      'Each weight is a multiple of uniform attention over the keys its row sees (mean ± sd '
      "over sentences; heads' mean). Cross-attention: the row that writes the English "
      "object, on the French object's pieces, against the same row on as many pieces where "
      'a monotone diagonal alignment would look (a position habit). Decoder self-attention: '
      "that row on the verb's translation, against every row on the keys at the same "
      "distance back, and every row on its own input, the previous output token:", '',
      '| layer | cross: object | cross: diagonal (control) | object > diagonal | '
      "self: verb's translation | self: same distance (control) | self: previous token |",
      '|---|---|---|---|---|---|---|']
  for i, row in enumerate(by_layer):
    lines.append(
        f"| {i} | {_ratio(row['cross_object_ratio'], row['cross_object_ratio_sd'])} | "
        f"{_ratio(row['cross_diagonal_ratio'], row['cross_diagonal_ratio_sd'])} | "
        f"{row['object_above_diagonal']} of {row['sentences']} | "
        f"{_ratio(row['self_verb_ratio'], row['self_verb_ratio_sd'])} | "
        f"{_ratio(row['self_same_distance_ratio'], row['self_same_distance_ratio_sd'])} | "
        f"{_ratio(row['self_previous_token_ratio'], row['self_previous_token_ratio_sd'])} |")
  last = by_layer[-1]
  n = last['sentences']
  above, verb_above = last['object_above_diagonal'], last['verb_above_same_distance']
  lines += [
      '', f"In the last layer, attention to the object's source word is "
      f"{_ratio(last['cross_object_ratio'])} uniform, against "
      f"{_ratio(last['cross_diagonal_ratio'])} for the diagonal control; it is the larger in "
      f"{above} of {n} sentences ({_sign_test(above, n)}; the two spans overlap in "
      f"{last['diagonal_overlaps_object']}). " + _verdict(
          above, n, "The object's translation reads its source word beyond what its "
          'position predicts.', "Position predicts where the object's translation looks as "
          'well as its source word does: this reading does not show attention to content.') +
      f" Its self-attention on the verb's translation is {_ratio(last['self_verb_ratio'])} "
      f"uniform, against {_ratio(last['self_same_distance_ratio'])} for any row at the same "
      f"distance back ({verb_above} of {n} sentences above it, {_sign_test(verb_above, n)}) "
      f"and {_ratio(last['self_previous_token_ratio'])} for the previous token; the verb's "
      f"translation is the previous token in {last['verb_is_previous_token']} of {n}.", '']
  return lines


def _order_pairs(measured: dict) -> tuple[dict, list]:
  """(word_order, pairs) of the measurements; those written before pairs (one pair under
  'order_sentences', one translation list a run) read as one pair."""
  if 'order_pairs' in measured:
    return measured['word_order'], measured['order_pairs']
  order = {name: {**out, 'translations': [out['translations']], 'same': [out['same']]}
           for name, out in measured['word_order'].items()}
  return order, [measured['order_sentences']]


def word_order_lines(order: dict, pairs: Sequence[Sequence[str]], runs: dict[str, dict],
                     baseline: Optional[dict]) -> list[str]:
  lines = ['### How is word order known?', '',
           "Self-attention alone is blind to order: permute the source and the encoder's "
           'outputs are permuted the same way, and cross-attention sums over them. The '
           'sinusoidal positions added to the embeddings are all the model knows of order. '
           f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''} of sentences with the same "
           'words in two orders (a fixed list '
           'of Bible names, learner.ORDER_PAIRS, every pair shown), greedy translations; '
           '"=" where both orders got one translation:', '',
           '| source | ' + ' | '.join(f"{name} ({out['positions']})" for name, out in
                                      order.items()) + ' |',
           '|---|' + '---|' * len(order)]
  for i, pair in enumerate(pairs):
    for j, sentence in enumerate(pair):
      cells = [out['translations'][i][j] + (' (=)' if out['same'][i] and j else '')
               for out in order.values()]
      lines.append(f'| {sentence} | ' + ' | '.join(cells) + ' |')
  lines += ['', '; '.join(f"{name}: one translation for both orders in {sum(out['same'])} of "
                          f"{len(pairs)}" for name, out in order.items()) + '.']
  if 'no_positions' in runs and baseline:
    run = runs['no_positions']
    lines += ['', f"Without positions the best validation loss is {run['best_eval_loss']:.3f} "
              f"against the baseline's {baseline['best_eval_loss']:.3f} (seed 0), and test "
              f"BLEU {run['bleu']:.2f} against {baseline['bleu']:.2f}."]
  return lines + ['']


def batch_norm_lines(stats: dict, groups: dict[str, list[dict]],
                     experiment: workdir_lib.ExperimentDir) -> list[str]:
  """Training mode against running statistics on the trained batch_norm model."""
  sizes = stats['by_size']
  row = lambda name, fmt: ' | '.join(fmt(s[name]) for s in sizes)
  percent = lambda v: f'{v:.1%}'
  lines = [
      '### Why LayerNorm rather than BatchNorm?', '',
      'LayerNorm normalizes each token over its own features; BatchNorm over the batch, with '
      'the statistics of the batch in training and running averages of them at test time. '
      f"Measured on the trained batch_norm run `{_run(stats['workdir'], experiment)}` (best "
      f"checkpoint, step {stats['step']}), the same network with dropout off in training mode "
      '(statistics of the batch) against evaluation mode (running statistics). One '
      f"validation sentence (“{stats['followed']}”, {stats['followed_tokens']} target "
      'tokens, teacher-forced on its reference) in batches with random batch-mates from '
      f"{stats['sentences']} validation sentences:", '',
      '| sentences per batch | ' + ' | '.join(str(s['size']) for s in sizes) + ' |',
      '|---|' + '---|' * len(sizes),
      '| its logits move with batch-mates (relative change from their mean) | '
      + row('moves', lambda v: f'{v:.3f}') + ' |',
      '| its logits against running statistics (relative change) | '
      + row('from_running', lambda v: f'{v:.3f}') + ' |',
      '| its next-token choice differs from running statistics | '
      + row('top1_changed', percent) + ' |',
      '| running statistics: largest change with batch-mates | '
      + row('running_moves', lambda v: f'{v:g}') + ' |',
      '| validation loss, statistics of each batch | '
      + ' | '.join(f'{v:.3f}' for v in stats['loss_batch_statistics']) + ' |', '']
  still = all(s['running_moves'] == 0 for s in sizes)
  first, last = sizes[0], sizes[-1]
  alone = max(s['running_vs_alone'] for s in sizes)
  lines.append(
      f"With running statistics the sentence's logits {'do not move at all' if still else 'move'}"
      f" whatever its batch-mates (largest change {max(s['running_moves'] for s in sizes):g} "
      f"among batches of one size; {alone:.1g} against the sentence alone, a program of "
      "another shape: rounding). "
      f"With the statistics of the batch, its logits are {first['from_running']:.3f} away "
      f"(relative) from the running statistics' alone and {last['from_running']:.3f} in "
      f"batches of {last['size']}, and its next-token choice differs on "
      f"{first['top1_changed']:.0%} and {last['top1_changed']:.0%} of its tokens. Validation "
      f"loss is {stats['loss_running']:.3f} with running statistics, against "
      f"{stats['loss_batch_statistics'][0]:.3f} with each sentence's own statistics and "
      f"{stats['loss_batch_statistics'][-1]:.3f} in batches of {last['size']}.")
  if groups.get('batch_norm') and groups.get('baseline'):
    bleu = lambda runs: significance.format_mean_std(
        [r['bleu'] for r in runs if not r['diverged']])
    lines.append(f"In training, the batch_norm variant reaches test BLEU "
                 f"{bleu(groups['batch_norm'])} against the baseline's {bleu(groups['baseline'])}"
                 ' (the variant table has the rest).')
  return lines + ['']


def decode_cost_lines(cost: dict) -> list[str]:
  """Cached against recomputing decodes by length: measured seconds and XLA's bytes."""
  mib = lambda b: f'{b / 2**20:.2f}'
  rows = cost['by_length']
  lines = [
      '### What does the KV cache save?', '',
      'Decoding keeps K and V of every source token and of every output so far, each decoder '
      'layer (the KV cache), so each step runs the decoder on one new position. Without it, '
      'each step reruns the decoder over the whole prefix (padded to the next power of two, '
      'one compiled program; the source is encoded once either way). One sentence, greedy, '
      'source and output of the same length, every length decoded in full. Time: median of '
      f"{cost['repeats']} runs after compilation on {cost['device']}. Memory: measured by "
      "XLA's memory analysis of each compiled program (its temporary buffers: the cache, "
      'activations, attention weights), not computed from array sizes; the parameters are '
      f"an argument of both ({mib(rows[0]['cached_argument_bytes'])} MiB).", '',
      '| tokens | cached (ms) | recompute (ms) | recompute / cached | cached: working MiB | '
      'recompute: working MiB | cache by formula (MiB) | same tokens |',
      '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['length']} | {r['cached_seconds'] * 1e3:.1f} | "
        f"{r['recomputed_seconds'] * 1e3:.1f} | "
        f"{r['recomputed_seconds'] / r['cached_seconds']:.1f}× | {mib(r['cached_temp_bytes'])} | "
        f"{mib(r['recomputed_temp_bytes'])} | {mib(r['cache_bytes_formula'])} | "
        f"{'yes' if r['same_tokens'] else '**no**'} |")
  first, last = rows[0], rows[-1]
  grow = lambda key: last[key] / first[key]
  lines += [
      '', f"From {first['length']} to {last['length']} tokens ({grow('length'):.0f}× longer) "
      f"the cached decode's time grows {grow('cached_seconds'):.1f}× and the recompute's "
      f"{grow('recomputed_seconds'):.1f}×; at {last['length']} tokens recomputing takes "
      f"{last['recomputed_seconds'] / last['cached_seconds']:.1f}× as long. Working memory "
      f"grows {grow('cached_temp_bytes'):.1f}× with the cache and "
      f"{grow('recomputed_temp_bytes'):.1f}× without it.", '',
      f"![decode cost]({workdir_lib.ExperimentDir.LEARNER}/{cost['plot']})"]
  return lines + ['']


def lines(experiment: workdir_lib.ExperimentDir, groups: dict[str, list[dict]],
          runs: dict[str, dict]) -> list[str]:
  """The section, from learner.measure's JSON, the variants' runs (`groups`) and the learner
  runs (`runs`: {'no_positions': its seed 0} when finished); [] before measure."""
  path = experiment.file(experiment.LEARNER, experiment.LEARNER_RESULT)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    measured = json.load(f)
  baseline = (groups.get('baseline') or [None])[0]
  out = ['', '## Questions a learner asks', '']
  out += attention_lines(measured['attention'], experiment)
  out += word_order_lines(*_order_pairs(measured), runs, baseline)
  if 'batch_norm' in measured:
    out += batch_norm_lines(measured['batch_norm'], groups, experiment)
  out += decode_cost_lines(measured['decode_cost'])
  return out
