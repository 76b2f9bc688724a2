"""decode.py end to end on a tiny trained workdir: order, edge cases, scores, search, maps."""

import logging
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from transformer import attention_maps
from transformer import inference
from transformer import search as search_lib
from transformer import translator as translator_lib

ROOT = pathlib.Path(__file__).parent.parent
MAX_LEN = conftest.MAX_LEN
SHORT = 'Dieu dit.'
MEDIUM = 'Au commencement, Dieu créa les cieux et la terre.'
MIDDLE = "Dieu vit que la lumière était bonne; et Dieu sépara la lumière d'avec les ténèbres."
LONG = ('La terre était informe et vide: il y avait des ténèbres à la surface de '
        "l'abîme, et l'esprit de Dieu se mouvait au-dessus des eaux.")


@pytest.fixture(scope='session')
def workdir(tiny_workdir):
  return tiny_workdir


@pytest.fixture(scope='session')
def trained(workdir):
  """(config, tokenizer, model, variables, step) of the tiny workdir."""
  return inference.load_trained(workdir)


def perturbed(variables, scale=0.3, seed=1):
  """The trained variables plus Gaussian noise.

  Two training steps leave a model that repeats one token; noise makes its greedy outputs
  vary with the source and the prefix, so that a search bug changes the tokens.
  """
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


def write(path, lines):
  path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  return os.fspath(path)


def test_input_order_kept_across_buckets(trained):
  _, tokenizer, model, variables, _, _ = trained
  variables = perturbed(variables)
  sentences = [LONG, SHORT, MIDDLE, MEDIUM, 'Et cela fut ainsi.', LONG + ' Dieu vit.']
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=2)
  sources = translator.encode_sources(sentences)
  buckets = {translator_lib.bucket_length(len(s), MAX_LEN) for s in sources}
  assert buckets == {16, 32, 48}  # The list really spans every bucket, out of order.
  search = translator_lib.SearchConfig(beam_size=1, max_decode_len=6)
  together = translator.translate_ids(variables, sources, search)
  alone = [translator.translate_ids(variables, [s], search)[0] for s in sources]
  assert together == alone
  assert len({tuple(t) for t in together}) >= 4  # Outputs differ, so a swap would show.


def test_empty_lines_give_empty_output_lines(workdir, tmp_path):
  lines = ['', SHORT, '   ', MEDIUM, '']
  out = tmp_path / 'out.en'
  result = inference.decode(workdir, input_path=write(tmp_path / 'in.fr', lines),
                             output_path=os.fspath(out), beam_size=1, max_decode_len=4)
  written = out.read_text(encoding='utf-8').split('\n')
  assert written[-1] == '' and len(written) == len(lines) + 1
  assert [bool(w) for w in written[:-1]] == [False, True, False, True, False]
  assert result['hypotheses'] == written[:-1]


def test_non_utf8_input_is_an_error_naming_the_line(workdir, tmp_path):
  path = tmp_path / 'latin1.fr'
  path.write_bytes('Dieu dit.\nÀ la fin.\n'.encode('latin-1'))
  with pytest.raises(inference.InputError, match=r'latin1\.fr:2: not valid UTF-8'):
    inference.decode(workdir, input_path=os.fspath(path))


def test_empty_input_file_is_an_error(workdir, tmp_path):
  path = tmp_path / 'empty.fr'
  path.write_bytes(b'')
  with pytest.raises(inference.InputError, match='empty: nothing to translate'):
    inference.decode(workdir, input_path=os.fspath(path))


@pytest.mark.parametrize('stdin, message', [
    (b'Dieu dit.\n\xe9t\xe9\n', 'stdin:2: not valid UTF-8'),
    (b'', 'stdin is empty: nothing to translate.'),
])
def test_decode_cli_input_errors_are_one_line(workdir, stdin, message):
  run = subprocess.run([sys.executable, 'decode.py', f'--workdir={workdir}', '--input=-'],
                       input=stdin, capture_output=True, cwd=ROOT)
  assert run.returncode == 1
  assert run.stderr.decode().splitlines()[-1].startswith(f'decode.py: error: {message}')
  assert b'Traceback' not in run.stderr


def test_too_long_sentence_is_truncated_with_a_warning(trained, workdir, tmp_path, caplog):
  _, tokenizer, _, _, _, _ = trained
  too_long = ' '.join([LONG] * 3)
  assert len(tokenizer.encode(too_long)) + 1 > MAX_LEN
  with caplog.at_level(logging.WARNING):
    result = inference.decode(
        workdir, input_path=write(tmp_path / 'in.fr', ['', SHORT, too_long]),
        output_path=os.fspath(tmp_path / 'out.en'), beam_size=1, max_decode_len=4)
  assert result['truncated'] == 1
  assert len(result['hypotheses']) == 3
  messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(m.startswith(f'Input line 3 has {len(tokenizer.encode(too_long)) + 1} tokens; '
                          f'the model reads at most {MAX_LEN}: truncated.') for m in messages)


def full_forward_greedy(model, variables, source, limit, eos_id):
  """Greedy decoding by a full teacher-forced pass per step: argmax of model(src, prefix).

  The next token after `prefix` is the argmax at position len(prefix) of a pass on targets
  prefix + [eos] (any non-pad token there; later positions are padding and masked). At
  position limit - 1 only eos may be chosen (search.py's convention), and the pad id 0 is
  never chosen (translator.py's rule). Returns the tokens before eos.
  """
  variables = jax.tree.map(np.asarray, variables)  # On the host: no mesh, no sharding.
  forward = jax.jit(lambda t: model.apply(variables, np.asarray([source]), t, train=False))
  prefix = []
  while True:
    targets = np.zeros((1, MAX_LEN), np.int32)
    targets[0, :len(prefix)] = prefix
    targets[0, len(prefix)] = eos_id
    token = eos_id if len(prefix) == limit - 1 else 1 + int(
        np.argmax(np.asarray(forward(targets))[0, len(prefix), 1:]))
    if token == eos_id:
      return prefix
    prefix.append(token)


@pytest.mark.parametrize('noise', [False, True], ids=['trained', 'perturbed'])
@pytest.mark.parametrize('cap', [None, 7], ids=['ratio_rule', 'max_decode_len'])
def test_cached_translator_equals_full_forward_greedy(trained, noise, cap):
  _, tokenizer, model, variables, _, _ = trained
  if noise:
    variables = perturbed(variables)
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=4)
  sources = translator.encode_sources([MEDIUM, SHORT, 'Et le soir vint.'])
  search = translator_lib.SearchConfig(beam_size=1, length_ratio=0.5, length_offset=3,
                                  max_decode_len=cap)
  cached = translator.translate_ids(variables, sources, search)
  limits = [cap or int(np.ceil(0.5 * len(s) + 3)) for s in sources]
  for got, source, limit in zip(cached, sources, limits):
    assert got == full_forward_greedy(model, variables, source, limit, tokenizer.eos_id)
  if noise:
    assert len({t for ids in cached for t in ids}) >= 4  # Not one repeated token.


def test_beam_search_keeping_the_cross_cache_fixed_equals_reordering_all_of_it(trained):
  """translate keeps the source mask and cross keys/values out of the beam reorder.

  Reference: search_lib.beam_search over the model's whole cache, every leaf reordered.
  """
  _, tokenizer, model, variables, _, _ = trained
  variables = perturbed(variables)
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=4)
  sources = translator.encode_sources([MEDIUM, SHORT, MIDDLE, 'Et le soir vint.'])
  search = translator_lib.SearchConfig(beam_size=4, max_decode_len=8)
  got = translator.translate_ids(variables, sources, search)

  host_variables = jax.tree.map(np.asarray, variables)
  rows = np.zeros((len(sources), translator_lib.bucket_length(max(map(len, sources)), MAX_LEN)),
                  np.int32)
  for row, source in zip(rows, sources):
    row[:len(source)] = source
  cache = model.apply(host_variables, rows, 8, method=model.init_cache)

  def step_fn(tokens, cache):
    logits, cache = model.apply(host_variables, cache, tokens, method=model.decode_step)
    return logits.at[:, 0].set(-jnp.inf), cache

  sequences, _ = search_lib.beam_search(step_fn, cache, batch_size=len(sources), beam_size=4,
                                      max_decode_len=8, length_penalty=search.length_penalty)
  expected = [translator_lib._strip(np.asarray(s), tokenizer.eos_id) for s in sequences[:, 0]]  # pylint: disable=protected-access
  assert got == expected
  assert len({tuple(t) for t in got}) >= 3  # Sentences differ, so a row mix-up would show.


def test_attention_maps(trained, tmp_path):
  config, tokenizer, model, variables, _, _ = trained
  variables = perturbed(variables)
  paths, weights = attention_maps.write_attention_maps(
      model, variables, tokenizer, SHORT, os.fspath(tmp_path),
      search=translator_lib.SearchConfig(max_decode_len=5))
  layers, heads = config.model.num_layers, config.model.num_heads
  assert len(paths) == len(set(paths)) == 3 * layers * heads
  for path in paths:
    assert pathlib.Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  source_len = len(tokenizer.encode(SHORT)) + 1
  assert weights['encoder_self'].shape == (layers, heads, source_len, source_len)
  target_len = weights['cross'].shape[2]
  assert 1 <= target_len <= 5
  assert weights['cross'].shape == (layers, heads, target_len, source_len)
  assert weights['decoder_self'].shape == (layers, heads, target_len, target_len)
  for kind in attention_maps.KINDS:
    np.testing.assert_allclose(weights[kind].sum(-1), 1.0, atol=1e-5)
  assert np.all(np.triu(weights['decoder_self'][0, 0], k=1) == 0)  # Causal.
  # Post-LN layer 0 attends over the embedded source itself: recompute it in NumPy.
  params = jax.tree.map(np.asarray, variables['params'])
  ids = np.asarray(tokenizer.encode(SHORT) + [tokenizer.eos_id])
  dim = config.model.emb_dim
  angles = np.arange(source_len)[:, None] / 10_000.0 ** (np.arange(dim // 2) / (dim // 2))
  x = params['shared_embedding']['embedding'][ids] * np.sqrt(dim) + np.concatenate(
      [np.sin(angles), np.cos(angles)], axis=-1)
  attention = params['encoder_layer_0']['self_attention']
  project = lambda dense: np.einsum('se,ehd->hsd', x, dense['kernel']) + dense['bias'][:, None]
  q, k = project(attention['query']), project(attention['key'])
  logits = np.einsum('hqd,hkd->hqk', q, k) / np.sqrt(q.shape[-1])
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights['encoder_self'][0], expected, atol=1e-5)


def test_cache_report_matches_the_real_cache(trained, workdir, tmp_path):
  config, _, model, variables, _, _ = trained
  result = inference.decode(workdir, input_path=write(tmp_path / 'in.fr', [SHORT, MIDDLE]),
                             output_path=os.fspath(tmp_path / 'out.en'), beam_size=2)
  assert {row['source_len'] for row in result['cache']} == {16, 32}
  for row in result['cache']:
    assert row['beam'] == 2 and row['batch'] == config.eval_batch_size
    init_cache = lambda inputs, length=row['max_decode_len']: model.apply(
        variables, inputs, length, method=model.init_cache)
    cache = jax.eval_shape(init_cache, jax.ShapeDtypeStruct(
        (row['batch'] * row['beam'], row['source_len']), jnp.int32))
    assert row['bytes'] == sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(cache))


def test_decode_cli_prints_what_the_sacrebleu_cli_prints(trained, workdir, tmp_path):
  """decode.py reading stdin; its score lines are the `sacrebleu -f text` lines."""
  sources = [SHORT, '', MEDIUM, 'Et le soir vint.']
  references = ['God said.', '', 'In the beginning, God created the heavens and the earth.',
                'There was evening.']
  ref, out, maps = tmp_path / 'ref.en', tmp_path / 'out.en', tmp_path / 'maps'
  write(ref, references)
  decoded = subprocess.run(
      [sys.executable, 'decode.py', f'--workdir={workdir}', '--input=-', f'--output={out}',
       f'--reference={ref}', '--beam_size=1', '--max_decode_len=6', '--cache_report',
       '--batch_size=2',
       f'--attention_dir={maps}', f'--attention_sentence={SHORT}'],
      input=''.join(s + '\n' for s in sources), capture_output=True, text=True, cwd=ROOT,
      check=True)
  assert len(out.read_text(encoding='utf-8').splitlines()) == len(sources)
  expected = subprocess.run(
      [os.path.join(os.path.dirname(sys.executable), 'sacrebleu'), os.fspath(ref),
       '-i', os.fspath(out), '-m', 'bleu', 'chrf', '-f', 'text', '-w', '2'],
      capture_output=True, text=True, check=True).stdout.splitlines()
  printed = [line for line in decoded.stderr.splitlines()
             if line.startswith(('BLEU|', 'chrF2|'))]
  assert [line.strip() for line in printed] == [line.strip() for line in expected]
  assert len(printed) == 2
  assert 'KV cache: batch 2 x beam 1' in decoded.stderr
  assert (f'Translated {len(sources)} sentences with the best checkpoint (step 2) in '
          in decoded.stderr)
  assert decoded.stderr.count('Translated ') == 1  # Said once.
  config = trained[0]
  assert len(list(maps.glob('*.png'))) == 3 * config.model.num_layers * config.model.num_heads


def test_workdir_translates_without_its_dataset(workdir, tmp_path):
  """A workdir carries its vocabulary: decode.py needs neither the dataset nor a network.

  The workdir is copied and its config pointed at an empty data_dir (a machine that never
  saw the corpus); decoding a file must translate as the original does and build nothing.
  """
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  moved, empty = tmp_path / 'moved', tmp_path / 'empty_tfds'
  shutil.copytree(workdir, moved)
  empty.mkdir()
  config_path = moved / 'config.json'
  recorded = json.loads(config_path.read_text())
  assert recorded['vocabulary']['file'] == 'vocabulary.model'
  recorded['data_dir'] = os.fspath(empty)
  config_path.write_text(json.dumps(recorded))
  source = write(tmp_path / 'in.fr', [SHORT, MEDIUM])
  here = inference.decode(workdir, input_path=source, output_path=os.fspath(tmp_path / 'a'),
                          beam_size=2)
  run = subprocess.run([sys.executable, 'decode.py', f'--workdir={moved}', f'--input={source}',
                        '--beam_size=2'], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, 'TFDS_DATA_DIR': os.fspath(empty)})
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines() == here['hypotheses']
  assert not list(empty.iterdir())  # Nothing was built or downloaded.


def test_a_changed_vocabulary_is_refused(workdir, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  moved = tmp_path / 'moved'
  shutil.copytree(workdir, moved)
  with open(moved / 'vocabulary.model', 'ab') as f:
    f.write(b'\0')
  with pytest.raises(ValueError, match='not the vocabulary this run was trained with'):
    inference.load_trained(os.fspath(moved))


def test_stdin_is_translated_line_by_line_as_it_arrives(workdir, tmp_path):
  """Behind a pipe: each translation comes back before the next line is written."""
  lines = [SHORT, MEDIUM, MIDDLE]
  expected = inference.decode(workdir, input_path=write(tmp_path / 'in.fr', lines),
                              output_path=os.fspath(tmp_path / 'out.en'))['hypotheses']
  with subprocess.Popen([sys.executable, 'decode.py', f'--workdir={workdir}', '--input=-'],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True, cwd=ROOT) as process:
    try:
      got = []
      for line in lines:
        process.stdin.write(line + '\n')
        process.stdin.flush()
        got.append(process.stdout.readline().rstrip('\n'))  # Blocks until this line is done.
      process.stdin.close()
      assert process.wait(timeout=120) == 0
    finally:
      process.kill()
  assert got == expected


def test_nbest_writes_scored_hypotheses_best_first(trained, workdir, tmp_path):
  """--nbest=3 at beam 4: JSON lines whose best text is the plain output, scores descending.

  The best hypothesis' score is checked against a teacher-forced pass: the sum of its token
  log-probabilities (the pad id excluded, as in search) over the GNMT length penalty.
  """
  import json  # pylint: disable=g-import-not-at-top
  config, tokenizer, model, variables, _, _ = trained
  lines = [SHORT, MEDIUM]
  source = write(tmp_path / 'in.fr', lines)
  plain = inference.decode(workdir, input_path=source, output_path=os.fspath(tmp_path / 'a'),
                           beam_size=4)['hypotheses']
  inference.decode(workdir, input_path=source, output_path=os.fspath(tmp_path / 'b'),
                   beam_size=4, nbest=3)
  rows = [json.loads(line) for line in (tmp_path / 'b').read_text().splitlines()]
  assert [row['source'] for row in rows] == lines
  assert [row['hypotheses'][0]['text'] for row in rows] == plain
  for row in rows:
    scores = [h['score'] for h in row['hypotheses']]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)

  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=2)
  search = translator_lib.SearchConfig(beam_size=4, length_penalty=config.length_penalty,
                                       nbest=3)
  ids, score = translator.search_ids(variables, translator.encode_sources([MEDIUM]), search)[0][0]
  target = ids + [tokenizer.eos_id]
  logits = np.array(model.apply(jax.device_get(variables),
                                jnp.asarray(translator.encode_sources([MEDIUM])),
                                jnp.asarray([target]), train=False)[0], np.float64)
  logits[:, 0] = -np.inf  # The search never chooses the pad id.
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  total = np.sum(log_probs[np.arange(len(target)), target])
  penalty = ((5 + len(target)) / 6) ** config.length_penalty
  np.testing.assert_allclose(score, total / penalty, rtol=1e-4)
  np.testing.assert_allclose(score, rows[1]['hypotheses'][0]['score'], rtol=1e-5)


def test_python_translator_is_decode_py_in_a_few_lines(workdir, tmp_path):
  """Translator.from_workdir gives decode.py's translations and n-best scores, in order."""
  import json  # pylint: disable=g-import-not-at-top
  lines = [MEDIUM, SHORT, '', LONG]
  source = write(tmp_path / 'in.fr', lines)
  inference.decode(workdir, input_path=source, output_path=os.fspath(tmp_path / 'nbest'),
                   beam_size=3, nbest=2)
  rows = [json.loads(line) for line in (tmp_path / 'nbest').read_text().splitlines()]
  translator = inference.Translator.from_workdir(workdir)
  assert translator.checkpoint == 'the best checkpoint (step 2)'
  found = translator.translate_nbest(lines, n=2, beam_size=3)
  assert [[text for text, _ in hypotheses] for hypotheses in found] == [
      [h['text'] for h in row['hypotheses']] for row in rows]
  np.testing.assert_allclose([s for hypotheses in found[:2] for _, s in hypotheses],
                             [h['score'] for row in rows[:2] for h in row['hypotheses']],
                             rtol=1e-6)
  plain = inference.decode(workdir, input_path=source, output_path=os.fspath(tmp_path / 'out'))
  assert translator.translate(lines) == plain['hypotheses']
  assert translator.translate(lines)[2] == ''  # An empty line gives an empty translation.


# Ensembles, sampling, repetition and length controls, scoring, batches by tokens.

SENTENCES = [MEDIUM, SHORT, MIDDLE, 'Et le soir vint.', LONG]


def ensemble_forward_greedy(model, members, source, limit, eos_id):
  """full_forward_greedy for an ensemble: argmax of the mean of the members' log-probs."""
  members = [jax.tree.map(np.asarray, v) for v in members]
  prefix = []
  while True:
    targets = np.zeros((1, MAX_LEN), np.int32)
    targets[0, :len(prefix)] = prefix
    targets[0, len(prefix)] = eos_id
    mean = 0.0
    for variables in members:
      logits = np.asarray(model.apply(variables, np.asarray([source]), targets, train=False),
                          np.float64)[0, len(prefix)]
      logits[0] = -np.inf
      mean = mean + (logits - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
    token = eos_id if len(prefix) == limit - 1 else int(np.argmax(mean / len(members)))
    if token == eos_id:
      return prefix
    prefix.append(token)


def test_ensemble_of_one_or_of_copies_equals_the_model(trained):
  config, tokenizer, model, variables, _, _ = trained
  variables = perturbed(variables)
  search = translator_lib.SearchConfig(beam_size=4, nbest=3,
                                       length_penalty=config.length_penalty, max_decode_len=9)
  single = translator_lib.BatchTranslator(model, tokenizer, batch_size=4)
  sources = single.encode_sources(SENTENCES)
  alone = single.search_ids(variables, sources, search)
  for size in (1, 3):
    ensemble = translator_lib.BatchTranslator([model] * size, tokenizer, batch_size=4)
    together = ensemble.search_ids([variables] * size, sources, search)
    for got, expected in zip(together, alone):
      assert [ids for ids, _ in got] == [ids for ids, _ in expected]
      np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5)
  assert len({tuple(h[0][0]) for h in alone}) >= 3


def test_ensemble_averages_the_members_log_probabilities(trained):
  """Greedy decoding of two different models equals an argmax of their mean log-probs."""
  _, tokenizer, model, variables, _, _ = trained
  members = [perturbed(variables, seed=1), perturbed(variables, seed=2)]
  translator = translator_lib.BatchTranslator([model, model], tokenizer, batch_size=4)
  sources = translator.encode_sources(SENTENCES[:3])
  search = translator_lib.SearchConfig(beam_size=1, max_decode_len=7)
  got = translator.translate_ids(members, sources, search)
  for ids, source in zip(got, sources):
    assert ids == ensemble_forward_greedy(model, members, source, 7, tokenizer.eos_id)
  alone = [translator_lib.BatchTranslator(model, tokenizer, batch_size=4).translate_ids(
      m, sources, search) for m in members]
  assert got != alone[0] or got != alone[1]  # The ensemble is not just one member.


def test_score_equals_the_nbest_scores_of_the_same_hypotheses(trained):
  """Teacher-forced scores of beam search's n best (one model and an ensemble of two)."""
  config, tokenizer, model, variables, _, _ = trained
  alpha = config.length_penalty
  for members in ([perturbed(variables)], [perturbed(variables, seed=1),
                                           perturbed(variables, seed=2)]):
    translator = translator_lib.BatchTranslator([model] * len(members), tokenizer, batch_size=4)
    sources = translator.encode_sources(SENTENCES)
    search = translator_lib.SearchConfig(beam_size=4, nbest=4, length_penalty=alpha,
                                         max_decode_len=8)
    found = translator.search_ids(members, sources, search)
    pairs = [(source, ids + [tokenizer.eos_id], score)
             for source, hypotheses in zip(sources, found) for ids, score in hypotheses]
    token_scores = translator.score_ids(members, [p[0] for p in pairs], [p[1] for p in pairs])
    for (_, target, score), scores in zip(pairs, token_scores):
      assert len(scores) == len(target)
      penalty = ((5 + len(target)) / 6) ** alpha
      np.testing.assert_allclose(sum(scores) / penalty, score, rtol=1e-4, atol=1e-5)
    assert len(pairs) >= 4 * len(SENTENCES) - 2


def test_score_cli_writes_each_pairs_log_probabilities(trained, workdir, tmp_path):
  """inference.score on text files against a teacher-forced NumPy log-softmax.

  An ensemble of the workdir with itself scores as the model alone; an empty source line
  scores nothing.
  """
  import json  # pylint: disable=g-import-not-at-top
  config, tokenizer, model, variables, _, _ = trained
  sources = [SHORT, '', MEDIUM]
  references = ['God said.', 'Nothing.', 'In the beginning, God created the heavens.']
  result = inference.score([workdir, workdir], input_path=write(tmp_path / 'in.fr', sources),
                           reference_path=write(tmp_path / 'ref.en', references),
                           output_path=os.fspath(tmp_path / 'scores'))
  rows = [json.loads(line) for line in (tmp_path / 'scores').read_text().splitlines()]
  assert rows == result['rows'] and len(rows) == 3 and result['pairs'] == 2
  assert rows[1]['log_prob'] is None and rows[1]['tokens'] == []
  host = jax.device_get(variables)
  for row, source, reference in zip(rows, sources, references):
    if not source:
      continue
    target = tokenizer.encode(reference) + [tokenizer.eos_id]
    logits = np.array(model.apply(host, jnp.asarray([tokenizer.encode(source) + [1]]),
                                  jnp.asarray([target]), train=False)[0], np.float64)
    logits[:, 0] = -np.inf
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    expected = log_probs[np.arange(len(target)), target]
    assert row['tokens'] == [tokenizer.processor.id_to_piece(i) for i in target]
    assert row['tokens'][-1] == '</s>'
    np.testing.assert_allclose(row['token_log_probs'], expected, rtol=1e-4, atol=1e-5)
    assert row['log_prob'] == pytest.approx(expected.sum(), rel=1e-4)
    assert row['score'] == pytest.approx(
        row['log_prob'] / ((5 + len(target)) / 6) ** config.length_penalty, rel=1e-6)


def test_sampling_cold_is_greedy_and_a_seed_repeats_whatever_the_batch(trained):
  _, tokenizer, model, variables, _, _ = trained
  variables = perturbed(variables)
  sources = translator_lib.BatchTranslator(model, tokenizer, batch_size=4).encode_sources(SENTENCES)
  greedy = translator_lib.SearchConfig(beam_size=1, max_decode_len=9)

  def run(search, batch_size=4, batch_tokens=None):
    return translator_lib.BatchTranslator(model, tokenizer, batch_size=batch_size,
                                     batch_tokens=batch_tokens).translate_ids(
                                         variables, sources, search)

  expected = run(greedy)
  cold = translator_lib.SearchConfig(beam_size=1, max_decode_len=9,
                                     sampling=search_lib.Sampling(temperature=1e-4, seed=5))
  assert run(cold) == expected
  hot = translator_lib.SearchConfig(beam_size=1, max_decode_len=9,
                                    sampling=search_lib.Sampling.parse('top_p:0.9', seed=5))
  sampled = run(hot)
  assert sampled != expected
  assert run(hot, batch_size=2) == sampled  # Other batches, same samples.
  assert run(hot, batch_tokens=40) == sampled
  other_seed = dataclasses_replace(hot, sampling=search_lib.Sampling.parse('top_p:0.9', seed=6))
  assert run(other_seed) != sampled


def dataclasses_replace(obj, **changes):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(obj, **changes)


def repeated(ids, n):
  grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
  return len(grams) - len(set(grams))


@pytest.mark.parametrize('beam_size', [1, 4])
def test_no_repeat_ngram_size_leaves_no_repeated_ngram(trained, beam_size):
  """The 2-step model repeats one token; with the rule no n-gram comes twice."""
  _, tokenizer, model, variables, _, _ = trained
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=4)
  sources = translator.encode_sources(SENTENCES)
  search = translator_lib.SearchConfig(beam_size=beam_size, max_decode_len=12,
                                       length_penalty=0.0)
  assert sum(repeated(ids, 2) for ids in translator.translate_ids(variables, sources, search))
  for n in (1, 2, 3):
    outputs = translator.translate_ids(
        variables, sources, dataclasses_replace(search, no_repeat_ngram_size=n))
    assert all(repeated(ids, n) == 0 for ids in outputs), outputs
    assert max(map(len, outputs)) >= n + 1  # Long enough to have repeated.


def with_eager_eos(variables, token):
  """The variables with eos's embedding row set to `token`'s: where `token` is the argmax,
  eos ties with it and wins (the lower id), so the model stops as early as it can."""
  embedding = variables['params']['shared_embedding']['embedding']
  params = {**variables['params'], 'shared_embedding': {
      'embedding': embedding.at[1].set(embedding[token])}}
  return {**variables, 'params': params}


def test_length_ratios_bound_the_output_by_the_source(trained):
  """Output tokens (eos included) against ceil(ratio * source tokens), eos included."""
  config, tokenizer, model, variables, _, _ = trained
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=4)
  sources = translator.encode_sources(SENTENCES)
  lengths = np.array([len(s) for s in sources])

  def output_lengths(variables, beam_size=1, **flags):
    search = dataclasses_replace(inference.search_config(config, beam_size=beam_size),
                                 **inference.search_overrides(**flags))
    return np.array([len(ids) + 1 for ids in translator.translate_ids(variables, sources,
                                                                      search)])

  talkative = variables  # Never says eos: every output runs to the length limit.
  outputs = translator.translate_ids(talkative, sources, inference.search_config(config))
  favourite = np.bincount([t for ids in outputs for t in ids]).argmax()
  terse = with_eager_eos(variables, favourite)
  assert np.all(output_lengths(talkative) > np.ceil(0.3 * lengths))
  assert np.sum(output_lengths(terse) < np.ceil(0.8 * lengths)) >= 2
  for beam_size in (1, 3):
    np.testing.assert_array_less(np.ceil(0.8 * lengths) - 1, output_lengths(
        terse, beam_size, min_length_ratio=0.8))
    np.testing.assert_array_less(output_lengths(talkative, beam_size, max_length_ratio=0.3),
                                 np.ceil(0.3 * lengths) + 1)
    for model_variables in (terse, talkative):
      np.testing.assert_array_equal(output_lengths(
          model_variables, beam_size, min_length_ratio=0.5, max_length_ratio=0.5),
                                    np.ceil(0.5 * lengths))


def test_batch_tokens_keeps_input_order_and_outputs(trained, workdir, tmp_path):
  _, tokenizer, model, variables, _, _ = trained
  variables = perturbed(variables)
  translator = translator_lib.BatchTranslator(model, tokenizer, batch_size=4, batch_tokens=64)
  assert [translator.batch_rows(n) for n in (16, 32, 48)] == [4, 2, 2]  # Two devices.
  sentences = SENTENCES + [SHORT + ' ' + SHORT, 'Dieu.']
  sources = translator.encode_sources(sentences)
  search = translator_lib.SearchConfig(beam_size=2, max_decode_len=6)
  by_tokens = translator.translate_ids(variables, sources, search)
  by_sentences = translator_lib.BatchTranslator(model, tokenizer, batch_size=2).translate_ids(
      variables, sources, search)
  assert by_tokens == by_sentences
  assert len({tuple(t) for t in by_tokens}) >= 4
  result = inference.decode(workdir, input_path=write(tmp_path / 'in.fr', sentences),
                            output_path=os.fspath(tmp_path / 'out'), beam_size=2,
                            batch_tokens=64)
  assert {(row['source_len'], row['batch']) for row in result['cache']} <= {
      (16, 4), (32, 2), (48, 2)}


@pytest.mark.parametrize('kwargs, message', [
    (dict(sampling='top_k:0'), r'--sampling=top_k:0: top_k:0 must be >= 1'),
    (dict(sampling='temperature:-1'), r'must be > 0'),
    (dict(sampling='top_p:2'), r'must be in \(0, 1\]'),
    (dict(sampling='nucleus:0.9'), r'give temperature:T'),
    (dict(sampling='top_k:5', beam_size=4), r'--sampling draws one output'),
    (dict(sampling='top_k:5', seed=-1), r'--seed=-1 must be >= 0'),
    (dict(no_repeat_ngram_size=-2), r'--no_repeat_ngram_size=-2 must be >= 0'),
    (dict(min_length_ratio=-0.5), r'--min_length_ratio=-0.5 must be >= 0'),
    (dict(max_length_ratio=0.0), r'--max_length_ratio=0.0 must be > 0'),
    (dict(min_length_ratio=2.0, max_length_ratio=1.0), r'is above --max_length_ratio'),
    (dict(max_length_ratio=1.0, max_decode_len=5), r'give one'),
    (dict(batch_tokens=0), r'--batch_tokens=0 must be >= 1'),
    (dict(batch_tokens=100, batch_size=4), r'give one'),
])
def test_bad_new_flags_are_refused_before_any_checkpoint_loads(workdir, tmp_path, monkeypatch,
                                                               kwargs, message):
  monkeypatch.setattr(inference, 'load_trained', lambda *a, **k: pytest.fail('loaded'))
  with pytest.raises(inference.InputError, match=message) as error:
    inference.decode(workdir, input_path=write(tmp_path / 'in.fr', [SHORT]), **kwargs)
  assert '\n' not in str(error.value)


def copy_with_vocabulary(workdir, folder, model_proto):
  """A copy of `workdir` whose vocabulary.model is `model_proto`, config.json's record updated
  (as if that run had been trained with it)."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from transformer import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  shutil.copytree(workdir, folder)
  (folder / 'vocabulary.model').write_bytes(model_proto.SerializeToString())
  recorded = json.loads((folder / 'config.json').read_text())
  recorded['vocabulary']['fingerprint'] = tokenizer_lib.fingerprint(folder / 'vocabulary.model')
  (folder / 'config.json').write_text(json.dumps(recorded))
  return os.fspath(folder)


def test_ensemble_vocabularies_are_compared_by_content(workdir, tmp_path, monkeypatch):
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  vocabulary = pathlib.Path(workdir, 'vocabulary.model')
  proto.ParseFromString(vocabulary.read_bytes())
  proto.trainer_spec.model_prefix = '/elsewhere/spm'  # Other bytes, same vocabulary.
  same = copy_with_vocabulary(workdir, tmp_path / 'same', proto)
  assert pathlib.Path(same, 'vocabulary.model').read_bytes() != vocabulary.read_bytes()
  inference.check_ensemble([workdir, same])
  proto.pieces[5].piece = proto.pieces[5].piece + 'x'  # One piece differs.
  other = copy_with_vocabulary(workdir, tmp_path / 'other', proto)
  monkeypatch.setattr(inference, 'load_trained', lambda *a, **k: pytest.fail('loaded'))
  with pytest.raises(inference.InputError, match='another vocabulary than'):
    inference.decode([workdir, other], input_path=write(tmp_path / 'in.fr', [SHORT]))
  run = subprocess.run([sys.executable, 'decode.py', f'--workdir={workdir}',
                        f'--ensemble={other}', '--input=-'], input='Dieu dit.\n',
                       capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 1 and 'Traceback' not in run.stderr
  assert run.stderr.splitlines()[-1].startswith('decode.py: error: ')
  assert 'an ensemble needs one vocabulary' in run.stderr


def test_decode_cli_takes_the_new_flags(workdir, tmp_path):
  """decode.py end to end: an ensemble sampling cold equals greedy; --score writes JSON lines."""
  import json  # pylint: disable=g-import-not-at-top
  source = write(tmp_path / 'in.fr', [SHORT, MEDIUM])
  greedy = inference.decode(workdir, input_path=source, beam_size=1, max_decode_len=6,
                            output_path=os.fspath(tmp_path / 'greedy'))['hypotheses']
  run = subprocess.run(
      [sys.executable, 'decode.py', f'--workdir={workdir}', f'--ensemble={workdir}',
       f'--input={source}', '--sampling=temperature:0.0001', '--seed=1', '--max_decode_len=6',
       '--batch_tokens=64', '--no_repeat_ngram_size=0'],
      capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines() == greedy
  reference = write(tmp_path / 'ref.en', ['God said.', 'In the beginning.'])
  scored = subprocess.run(
      [sys.executable, 'decode.py', f'--workdir={workdir}', '--score', f'--input={source}',
       f'--reference={reference}'], capture_output=True, text=True, cwd=ROOT)
  assert scored.returncode == 0, scored.stderr
  rows = [json.loads(line) for line in scored.stdout.splitlines()]
  assert [row['reference'] for row in rows] == ['God said.', 'In the beginning.']
  assert all(row['log_prob'] < 0 and row['tokens'][-1] == '</s>' for row in rows)
  assert 'Scored 2 pairs' in scored.stderr
