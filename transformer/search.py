"""Model-agnostic greedy and beam search over a KV cache.

The model is seen only through a pure step function

  step_fn(tokens: int32[N], cache) -> (logits: float32[N, vocab], new_cache)

which consumes the previous token of each of N rows and returns the logits of
the next one. Every cache leaf has N as its leading axis, or is a scalar (e.g. a
shared step counter) that beam search leaves alone when it tiles and reorders
rows. Step 0 feeds `bos_id` (the pad id in this project).

Conventions shared by both searches:

* Output position t holds the token chosen at step t (no BOS is returned).
  Every returned sequence ends with `eos_id` and is 0-padded after it.
* A sentence may produce at most min(max_lengths[b], max_decode_len) tokens,
  eos included. At its last allowed position only eos may be chosen, and it
  keeps the model's log-probability (as in fairseq), so a truncated hypothesis
  is scored as the sequence it really is rather than getting a free eos.
* Each search is one `lax.while_loop` that stops as soon as no sentence can
  change its result, so a batch of short sentences takes few steps under jit.

The structure follows the Flax examples/wmt decoder (tiling the cache into a
flat batch*beam axis, a separate set of finished hypotheses, the early-stopping
bound); see `beam_search` for where it differs.
"""

import dataclasses
from typing import Any, Callable, Optional, Tuple

from flax import struct
import jax
from jax import lax
import jax.numpy as jnp

PAD_ID = 0

Cache = Any  # a pytree of arrays: [N, ...] leaves or scalars
StepFn = Callable[[jax.Array, Cache], Tuple[jax.Array, Cache]]


def length_penalty_fn(length, alpha):
  """GNMT length penalty lp = ((5 + length) / 6) ** alpha (Wu et al. 2016).

  A hypothesis scores sum(log-probs) / lp, so alpha = 0 ranks by raw
  log-probability and larger alpha favors longer outputs. `length` counts the
  generated tokens including eos (as the Flax wmt example does), so a
  hypothesis that is only eos has lp = 1.

  Args:
    length: int or array of lengths, eos included.
    alpha: float >= 0; the early-stopping bound in `beam_search` needs lp to
      grow with length.

  Returns:
    float32 array of the same shape as `length`.
  """
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# Beam-dimension helpers. A scalar leaf is shared by every row (e.g. a cache
# index), so it is never tiled, reshaped or gathered.


def add_beam_dim(x, beam_size):
  """[batch, ...] -> [batch, beam, ...], each row repeated beam_size times."""
  if jnp.ndim(x) == 0:
    return x
  x = jnp.asarray(x)
  return jnp.broadcast_to(x[:, None], (x.shape[0], beam_size) + x.shape[1:])


def flatten_beam_dim(x):
  """[batch, beam, ...] -> [batch * beam, ...], the layout step_fn sees."""
  if jnp.ndim(x) == 0:
    return x
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def unflatten_beam_dim(x, beam_size):
  """[batch * beam, ...] -> [batch, beam, ...]."""
  if jnp.ndim(x) == 0:
    return x
  return x.reshape((x.shape[0] // beam_size, beam_size) + x.shape[1:])


def gather_beams(tree, beam_indices):
  """Picks beams per batch entry on every leaf of a pytree.

  Args:
    tree: pytree whose non-scalar leaves are [batch, old_beam, ...].
    beam_indices: int32[batch, new_beam], indices into old_beam.

  Returns:
    The pytree with leaves [batch, new_beam, ...].
  """
  batch_indices = jnp.arange(beam_indices.shape[0])[:, None]  # [batch, 1]

  def gather(x):
    if jnp.ndim(x) == 0:
      return x
    return x[batch_indices, beam_indices]

  return jax.tree_util.tree_map(gather, tree)


def _sentence_limits(max_lengths, batch_size, max_decode_len):
  """Per-sentence token budget in [1, max_decode_len], eos included: int32[B]."""
  if max_lengths is None:
    return jnp.full((batch_size,), max_decode_len, jnp.int32)
  max_lengths = jnp.asarray(max_lengths, jnp.int32)
  if max_lengths.shape != (batch_size,):
    raise ValueError(
        f'max_lengths has shape {max_lengths.shape}, expected ({batch_size},)')
  return jnp.clip(max_lengths, 1, max_decode_len)


def _previous_tokens(sequences, step, bos_id):
  """The tokens to feed at `step`: BOS first, then the last chosen token.

  Args:
    sequences: int32[..., max_decode_len] tokens chosen so far.
    step: int32 scalar, the position about to be decoded.
    bos_id: token fed at step 0.

  Returns:
    int32[...].
  """
  last = lax.dynamic_index_in_dim(
      sequences, jnp.maximum(step - 1, 0), axis=-1, keepdims=False)
  return jnp.where(step == 0, bos_id, last)


# Constraints shared by the searches: length limits and the no-repeat rule.


def _min_lengths(min_lengths, limits):
  """Per-sentence least number of tokens, eos included, in [1, limit]: int32[B] or None."""
  if min_lengths is None:
    return None
  return jnp.clip(jnp.asarray(min_lengths, jnp.int32), 1, limits)


def repeated_ngram_bans(sequences, step, n: int, vocab_size: int):
  """Tokens that would complete an n-gram already in the sequence: bool[rows, vocab].

  As fairseq's --no_repeat_ngram_size: at `step` the last n-1 chosen tokens are matched
  against every earlier window of n-1 tokens, and the token that followed each match is
  banned. n = 1 bans every token already chosen.

  Args:
    sequences: int32[rows, max_decode_len], the tokens chosen at positions < step.
    step: int32 scalar, the position about to be decoded.
    n: the n-gram size (static, >= 1).
    vocab_size: the logits' last dimension.
  """
  rows, length = sequences.shape
  starts = jnp.arange(length)  # The n-gram sequences[j : j + n] starts at j.
  matches = starts + n - 1 < step  # Its last token is already chosen.
  for offset in range(n - 1):
    window = jnp.roll(sequences, -offset, axis=1)  # window[:, j] = sequences[:, j + offset]
    last = lax.dynamic_index_in_dim(sequences, step - (n - 1) + offset, axis=1)  # [rows, 1]
    matches = matches & (window == last)
  follower = jnp.roll(sequences, -(n - 1), axis=1)  # The n-gram's last token.
  return jnp.zeros((rows, vocab_size), jnp.int8).at[
      jnp.arange(rows)[:, None], follower].max(matches.astype(jnp.int8)) > 0


def constrain(scores, sequences, step, *, limits, min_lengths, no_repeat_ngram_size: int,
              eos_id: int):
  """-inf on the tokens a hypothesis may not choose at `step`: scores float[rows, vocab].

  At its limit only eos may be chosen. Before its minimum length eos may not, unless
  nothing else is left (the no-repeat rule can ban every other token). eos is never
  banned by the no-repeat rule: it ends a hypothesis, so no n-gram ending in it repeats.
  limits and min_lengths (None: no minimum) are int32[rows].
  """
  vocab = jnp.arange(scores.shape[-1])
  is_eos = vocab == eos_id  # [vocab]
  if no_repeat_ngram_size:
    banned = repeated_ngram_bans(sequences, step, no_repeat_ngram_size, scores.shape[-1])
    scores = jnp.where(banned & ~is_eos, -jnp.inf, scores)
  if min_lengths is not None:
    other_left = jnp.any(jnp.isfinite(scores) & ~is_eos, axis=-1, keepdims=True)  # [rows, 1]
    too_short = (step < min_lengths - 1)[:, None] & other_left
    scores = jnp.where(too_short & is_eos, -jnp.inf, scores)
  at_limit = (step == limits - 1)[:, None]
  return jnp.where(at_limit & ~is_eos, -jnp.inf, scores)


# Sampling.


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Ancestral sampling: logits / temperature, then top-k, then nucleus (top-p) truncation.

  `seed` and a row's sentence id pick its random stream, so a sentence samples the same
  tokens whatever batch it lands in (Holtzman et al. 2020 for top-p).
  """
  temperature: float = 1.0
  top_k: int = 0  # 0 = no top-k truncation.
  top_p: float = 1.0  # 1 = no nucleus truncation.
  seed: int = 0

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f'temperature:{self.temperature} must be > 0.')
    if self.top_k < 0:
      raise ValueError(f'top_k:{self.top_k} must be >= 1.')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p:{self.top_p} must be in (0, 1].')

  @classmethod
  def parse(cls, spec: str, seed: int = 0) -> 'Sampling':
    """'temperature:T', 'top_k:K', 'top_p:P' or several joined by commas."""
    fields = {}
    for item in spec.split(','):
      name, _, value = item.strip().partition(':')
      if name not in ('temperature', 'top_k', 'top_p') or not value or name in fields:
        raise ValueError(f'{item.strip()!r}: give temperature:T, top_k:K or top_p:P '
                         '(several joined by commas, each once).')
      try:
        fields[name] = int(value) if name == 'top_k' else float(value)
      except ValueError:
        raise ValueError(f'{item.strip()!r}: {value!r} is not a number'
                         f'{" (an integer)" if name == "top_k" else ""}.') from None
    if fields.get('top_k') == 0:
      raise ValueError('top_k:0 must be >= 1.')
    return cls(seed=seed, **fields)

  def truncate(self, logits):
    """float[rows, vocab] logits -> tempered logits, -inf outside the top-k and nucleus."""
    logits = logits.astype(jnp.float32) / self.temperature
    if self.top_k and self.top_k < logits.shape[-1]:
      kth = lax.top_k(logits, self.top_k)[0][:, -1:]  # [rows, 1]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    if self.top_p < 1:
      # The smallest set of most probable tokens whose mass reaches top_p (ties kept).
      ordered = -jnp.sort(-logits, axis=-1)
      probs = jax.nn.softmax(ordered, axis=-1)
      mass_before = jnp.cumsum(probs, axis=-1) - probs
      last_kept = jnp.sum(mass_before < self.top_p, axis=-1, keepdims=True) - 1  # [rows, 1]
      cutoff = jnp.take_along_axis(ordered, last_kept, axis=-1)
      logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits

  def draw(self, logits, row_ids, step):
    """One token per row from the truncated distribution: int32[rows]."""
    base = jax.random.fold_in(jax.random.key(self.seed), step)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(row_ids)
    return jax.vmap(jax.random.categorical)(keys, self.truncate(logits)).astype(jnp.int32)


# Greedy search.


@struct.dataclass
class GreedyState:
  """Loop carry of `greedy_search`."""
  step: jax.Array  # int32 scalar: the position decoded next
  tokens: jax.Array  # int32 [batch, max_decode_len], 0 where not yet decoded
  ended: jax.Array  # bool [batch]: the sentence has emitted eos
  cache: Cache  # leaves [batch, ...] or scalars


def greedy_search(step_fn: StepFn,
                  cache: Cache,
                  *,
                  batch_size: int,
                  max_decode_len: int,
                  max_lengths: Optional[jax.Array] = None,
                  min_lengths: Optional[jax.Array] = None,
                  no_repeat_ngram_size: int = 0,
                  sampling: Optional[Sampling] = None,
                  row_ids: Optional[jax.Array] = None,
                  eos_id: int = 1,
                  bos_id: int = 0) -> jax.Array:
  """Decodes by taking the most probable token at every step, or by sampling it.

  Args:
    step_fn: the model's single-step decoder (see the module docstring).
    cache: its cache for `batch_size` rows.
    batch_size: number of sentences (static).
    max_decode_len: length of the output (static).
    max_lengths: optional int32[batch] token budget per sentence, eos included;
      the sentence is forced to end with eos when it is reached.
    min_lengths: optional int32[batch] least tokens per sentence, eos included.
    no_repeat_ngram_size: n > 0 bans repeating any n-gram (see repeated_ngram_bans).
    sampling: draw each token from the truncated distribution instead of the argmax.
    row_ids: int32[batch], each row's random stream with sampling (default: its index).
    eos_id: end-of-sentence token.
    bos_id: token fed at the first step.

  Returns:
    int32[batch, max_decode_len]: tokens up to and including eos, then 0.
  """
  limits = _sentence_limits(max_lengths, batch_size, max_decode_len)  # [B]
  min_lengths = _min_lengths(min_lengths, limits)
  if row_ids is None:
    row_ids = jnp.arange(batch_size, dtype=jnp.int32)

  def not_done(state):
    return (state.step < max_decode_len) & ~jnp.all(state.ended)

  def decode_one_token(state):
    logits, cache = step_fn(
        _previous_tokens(state.tokens, state.step, bos_id), state.cache)
    scores = constrain(logits, state.tokens, state.step, limits=limits,
                       min_lengths=min_lengths, no_repeat_ngram_size=no_repeat_ngram_size,
                       eos_id=eos_id)
    if sampling is None:
      next_tokens = jnp.argmax(scores, axis=-1).astype(jnp.int32)  # [B]
    else:
      next_tokens = sampling.draw(scores, row_ids, state.step)
    next_tokens = jnp.where(state.step == limits - 1, eos_id, next_tokens)
    next_tokens = jnp.where(state.ended, PAD_ID, next_tokens)
    return GreedyState(
        step=state.step + 1,
        tokens=state.tokens.at[:, state.step].set(next_tokens),
        ended=state.ended | (next_tokens == eos_id),
        cache=cache)

  initial_state = GreedyState(
      step=jnp.array(0, jnp.int32),
      tokens=jnp.full((batch_size, max_decode_len), PAD_ID, jnp.int32),
      ended=jnp.zeros((batch_size,), jnp.bool_),
      cache=cache)
  return lax.while_loop(not_done, decode_one_token, initial_state).tokens


# Beam search.


@struct.dataclass
class BeamState:
  """Loop carry of `beam_search`; -inf log-probs or scores mark empty slots."""
  step: jax.Array  # int32 scalar: the position decoded next
  live_seqs: jax.Array  # int32 [batch, beam, max_decode_len]: no eos yet
  live_log_probs: jax.Array  # float32 [batch, beam]: sum of token log-probs
  finished_seqs: jax.Array  # int32 [batch, beam, max_decode_len]: end in eos
  finished_scores: jax.Array  # float32 [batch, beam]: best first, GNMT score
  cache: Cache  # leaves [batch * beam, ...] (the live beams) or scalars


def beam_search(step_fn: StepFn,
                cache: Cache,
                *,
                batch_size: int,
                beam_size: int,
                max_decode_len: int,
                max_lengths: Optional[jax.Array] = None,
                min_lengths: Optional[jax.Array] = None,
                no_repeat_ngram_size: int = 0,
                length_penalty: float = 0.6,
                eos_id: int = 1,
                bos_id: int = 0) -> Tuple[jax.Array, jax.Array]:
  """Beam search ranked by the GNMT score sum(log-probs) / lp(length).

  Each step extends the `beam_size` live hypotheses by every token and ranks
  the candidates by log-probability. As in classic beam search (and fairseq), a
  candidate ending in eos is kept as finished only if it ranks among the top
  `beam_size`; the live beam is refilled from the best candidates without eos.
  So the beam at each step is the top-k extensions, and beam_size=1 with
  length_penalty=0 is greedy search. (Flax wmt also keeps eos candidates
  ranked k+1..2k, which explores more but breaks that equivalence.)

  The loop stops, as in Flax wmt, once for every sentence no live hypothesis
  can beat the worst finished one: log-probs only fall as a hypothesis grows
  and lp grows with length, so best_live_log_prob / lp(limit) bounds any score
  still reachable. A sentence with fewer than beam_size finished hypotheses is
  not done while anything is alive.

  Args:
    step_fn: the model's single-step decoder (see the module docstring).
    cache: its cache for `batch_size` rows; tiled here to batch * beam rows.
    batch_size: number of sentences (static).
    beam_size: hypotheses kept per sentence (static).
    max_decode_len: length of the output (static).
    max_lengths: optional int32[batch] token budget per sentence, eos included;
      live hypotheses are forced to end with eos when it is reached.
    min_lengths: optional int32[batch] least tokens per sentence, eos included.
    no_repeat_ngram_size: n > 0 bans repeating any n-gram (see repeated_ngram_bans);
      banned tokens get -inf after the softmax, so scores stay the model's log-probs.
    length_penalty: alpha of `length_penalty_fn`, >= 0.
    eos_id: end-of-sentence token.
    bos_id: token fed at the first step.

  Returns:
    sequences: int32[batch, beam, max_decode_len], best first, each ending in
      eos then 0-padded.
    scores: float32[batch, beam], descending. A slot is -inf (and its sequence
      all 0) only when fewer than beam_size eos-terminated sequences exist.
  """
  limits = _sentence_limits(max_lengths, batch_size, max_decode_len)  # [B]
  min_lengths = _min_lengths(min_lengths, limits)
  row_limits = jnp.repeat(limits, beam_size)  # [B * beam], the layout step_fn sees
  row_min_lengths = None if min_lengths is None else jnp.repeat(min_lengths, beam_size)
  # The best any live hypothesis can still be divided by.
  max_penalty = length_penalty_fn(limits, length_penalty)  # [B]

  def not_done(state):
    best_live = jnp.max(state.live_log_probs, axis=1)  # [B]
    worst_finished = state.finished_scores[:, -1]  # [B], -inf if not full
    sentence_done = worst_finished >= best_live / max_penalty  # [B]
    return (state.step < max_decode_len) & ~jnp.all(sentence_done)

  def decode_one_token(state):
    step = state.step
    tokens = _previous_tokens(state.live_seqs, step, bos_id)  # [B, beam]
    flat_logits, cache = step_fn(flatten_beam_dim(tokens), state.cache)
    flat_log_probs = constrain(
        jax.nn.log_softmax(flat_logits.astype(jnp.float32)), flatten_beam_dim(state.live_seqs),
        step, limits=row_limits, min_lengths=row_min_lengths,
        no_repeat_ngram_size=no_repeat_ngram_size, eos_id=eos_id)
    log_probs = unflatten_beam_dim(flat_log_probs, beam_size)  # [B, beam, vocab]
    vocab_size = log_probs.shape[-1]
    log_probs = log_probs + state.live_log_probs[:, :, None]

    # Each live beam yields at most one eos candidate, so the top 2k
    # candidates always hold k without eos to refill the live beam.
    candidate_log_probs, flat_indices = lax.top_k(
        log_probs.reshape(batch_size, beam_size * vocab_size),
        2 * beam_size)  # [B, 2k]
    parent_beams = flat_indices // vocab_size  # [B, 2k]
    new_tokens = flat_indices % vocab_size  # [B, 2k]
    candidate_seqs = gather_beams(state.live_seqs, parent_beams)
    candidate_seqs = candidate_seqs.at[:, :, step].set(new_tokens)
    ends = new_tokens == eos_id  # [B, 2k]

    # Finished: eos candidates within the top k, merged with earlier ones.
    in_beam = jnp.arange(2 * beam_size) < beam_size  # [2k]
    newly_finished = ends & in_beam & jnp.isfinite(candidate_log_probs)
    new_scores = jnp.where(
        newly_finished,
        candidate_log_probs / length_penalty_fn(step + 1, length_penalty),
        -jnp.inf)
    finished_scores, keep = lax.top_k(
        jnp.concatenate([state.finished_scores, new_scores], axis=1),
        beam_size)  # [B, k]; lax.top_k keeps earlier entries first on ties.
    finished_seqs = gather_beams(
        jnp.concatenate([state.finished_seqs, candidate_seqs], axis=1), keep)

    # Live: the best k candidates without eos, with their parents' caches.
    live_log_probs, keep = lax.top_k(
        jnp.where(ends, -jnp.inf, candidate_log_probs), beam_size)  # [B, k]
    live_seqs = gather_beams(candidate_seqs, keep)
    live_parents = jnp.take_along_axis(parent_beams, keep, axis=1)  # [B, k]
    # The flat rows of the parents: one index per row, each a contiguous slab to copy.
    parent_rows = (jnp.arange(batch_size)[:, None] * beam_size + live_parents).reshape(-1)
    cache = jax.tree_util.tree_map(
        lambda x: x if jnp.ndim(x) == 0 else jnp.take(x, parent_rows, axis=0,
                                                       unique_indices=False,
                                                       indices_are_sorted=False,
                                                       mode='clip'), cache)

    return BeamState(
        step=step + 1,
        live_seqs=live_seqs,
        live_log_probs=live_log_probs,
        finished_seqs=finished_seqs,
        finished_scores=finished_scores,
        cache=cache)

  # All beams start identical, so only beam 0 is alive at step 0.
  empty_seqs = jnp.full((batch_size, beam_size, max_decode_len), PAD_ID,
                        jnp.int32)
  initial_state = BeamState(
      step=jnp.array(0, jnp.int32),
      live_seqs=empty_seqs,
      live_log_probs=jnp.tile(
          jnp.array([0.0] + [-jnp.inf] * (beam_size - 1), jnp.float32),
          (batch_size, 1)),
      finished_seqs=empty_seqs,
      finished_scores=jnp.full((batch_size, beam_size), -jnp.inf,
                               jnp.float32),
      cache=jax.tree_util.tree_map(
          lambda x: flatten_beam_dim(add_beam_dim(x, beam_size)), cache))
  final_state = lax.while_loop(not_done, decode_one_token, initial_state)
  return final_state.finished_seqs, final_state.finished_scores
