"""The study's baseline: a post-LN Transformer-base (Vaswani et al. 2017) on IWSLT2017 fr->en.

Every field of every experiment lives here, each with a one-line comment. A variant file
imports this module and overrides only the fields it studies, so `diff(variant, base)` is
the experiment. `get_config('small')` swaps the data and size for the embedded Bible corpus
and a model that trains in about ten minutes on two CPU cores; `get_config('bible_base')`
keeps Transformer-base and trains it on every Bible pair on one GPU, in bfloat16. The
normalization and regularization fields are left alone, so every variant has every scale.
"""

import ml_collections

SCALES = ('full', 'small', 'bible_base')


def get_config(scale: str = 'full') -> ml_collections.ConfigDict:
  """Returns the baseline config at `scale` (one of SCALES)."""
  if scale not in SCALES:
    raise ValueError(f'Unknown scale {scale!r}; expected one of {SCALES}.')
  config = ml_collections.ConfigDict()
  # 'full' (IWSLT2017, Transformer-base, one GPU), 'small' (Bible, CPU) or 'bible_base'
  # (Bible, Transformer-base, one GPU).
  config.scale = scale

  # Data.
  config.dataset_name = 'iwslt2017_fr_en'  # TFDS name: 'iwslt2017_fr_en' or 'bible_fr_en'.
  config.data_dir = ''  # TFDS data_dir for prepared data and vocabularies; '' = TFDS default.
  config.manual_dir = ''  # Folder holding the IWSLT fr-en.tgz/zip; '' = <data_dir>/downloads/manual.
  config.vocab_size = 16_000  # Joint sentencepiece vocabulary size (ids: pad 0, eos 1, unk 2).
  config.max_length = 128  # Tokens per packed source row; longer training pairs are skipped.
  # Tokens per packed target row. French takes more pieces than English, so equal rows leave
  # target positions as padding (`python -m benchmarks.data_stats` on the Bible: 83% real with
  # 128, 92% with 112).
  config.max_target_length = 112
  # The batch. An optimizer step is grad_accum_steps micro-batches (optax.MultiSteps sums their
  # gradients), each of `rows` packed rows of max_length source / max_target_length target
  # positions, all devices together. With batch_tokens > 0 (and batch_size 0), rows =
  # batch_tokens / (grad_accum_steps * max_target_length): batch_tokens counts target
  # *positions* per optimizer step, as fairseq's --max-tokens counts padded ones; packing
  # leaves ~8-10% of them padding, so the real target tokens per step are ~0.9 * batch_tokens
  # (the epoch budget divides by the measured real tokens). batch_tokens must be a multiple of
  # grad_accum_steps * max_target_length. Raising grad_accum_steps at the same batch_tokens
  # trains the same function with micro-batches that fit a smaller device.
  config.batch_tokens = 25_088  # Target positions per optimizer step: 224 rows of 112 (~Vaswani's 25k).
  config.batch_size = 0  # Packed rows per micro-batch when batch_tokens is 0 (all devices).
  config.grad_accum_steps = 1  # Micro-batches per optimizer step (gradient accumulation).
  config.eval_batch_size = 64  # Sentences per evaluation/decoding batch (all devices).
  config.shuffle_buffer_seed_offset = 0  # Added to `seed` for the data order only.
  # Train on a fixed subset of this many training pairs (0 = all): the same pairs for every
  # seed and variant (a permutation seeded apart from `seed`), so that a small corpus can be
  # over-fitted on purpose (the study's regime). The vocabulary is still the full split's.
  config.max_train_pairs = 0

  # Model: read once into transformer.models.ModelConfig, so a misspelt field fails at start.
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = config.get_ref('vocab_size')  # Shared src/tgt/output embedding rows.
  config.model.emb_dim = 512  # d_model.
  config.model.num_heads = 8  # Attention heads.
  config.model.num_layers = 6  # Layers in the encoder and in the decoder (N = M).
  config.model.qkv_dim = 512  # Total query/key/value width over all heads.
  config.model.mlp_dim = 2048  # Feed-forward inner width (ReLU).
  config.model.max_len = 512  # Longest sequence the sinusoidal position table covers.
  config.model.positions = 'sinusoidal'  # 'sinusoidal' (Vaswani 3.5) or 'none' (no word order).
  config.model.dropout_rate = 0.1  # Residual dropout on each sublayer output, before Add&Norm.
  config.model.attention_dropout_rate = 0.0  # Dropout on the attention weights.
  config.model.activation_dropout_rate = 0.0  # Dropout after the feed-forward ReLU.
  config.model.norm = 'layer_norm'  # Registry name: layer_norm|rms_norm|batch_norm|scale_norm|none.
  config.model.norm_position = 'post'  # 'post': norm(x + F(x)) (Vaswani); 'pre': x + F(norm(x)).
  config.model.residual = 'identity'  # Residual form: identity | deep_norm (Wang 2022) | rezero.
  # Compute dtype: 'auto' = bfloat16 on GPU/TPU, float32 on CPU; or 'float32'/'bfloat16'.
  # Parameters, Adam state, logits, the loss and norm statistics stay float32 whatever it is.
  config.model.dtype = 'auto'
  config.model.attention_impl = 'xla'  # 'xla' (jax.nn.dot_product_attention) or 'einsum'; same math.
  config.model.batch_norm_axis_name = ''  # shard_map axis BatchNorm psums statistics over; '' = none.

  # Loss and regularization that live in the training loop.
  config.label_smoothing = 0.0  # Label smoothing epsilon (Szegedy et al. 2016).
  config.r_drop_alpha = 0.0  # R-Drop symmetric-KL weight (Liang et al. 2021); 0 disables it.
  config.weight_decay = 0.0  # Decoupled weight decay (AdamW, Loshchilov & Hutter 2019); 0 = Adam.

  # Optimizer and schedule.
  config.learning_rate = 7e-4  # Peak rate; 512**-0.5 * 4000**-0.5 is Vaswani's rsqrt peak.
  config.lr_schedule = 'rsqrt'  # 'rsqrt' (Vaswani), 'cosine' or 'linear' decay after warm-up.
  config.warmup_steps = 4000  # Linear warm-up steps (0 = start at the peak rate).
  config.adam_b1 = 0.9  # Adam beta1.
  config.adam_b2 = 0.98  # Adam beta2.
  config.adam_eps = 1e-9  # Adam epsilon.
  config.grad_clip_norm = 0.0  # Global-norm gradient clipping threshold; 0 disables it.

  # Loop, evaluation and checkpoints.
  config.seed = 0  # Seeds parameters, dropout and the data order.
  # The budget: num_train_steps optimizer steps when > 0, else num_train_epochs passes over the
  # train split's target tokens (training.epoch_budget: measured real tokens per step).
  config.num_train_steps = 0  # Optimizer steps; 0 = from num_train_epochs.
  config.num_train_epochs = 50.0  # Epochs, when num_train_steps is 0.
  config.patience = 0  # Evaluations without a new best validation BLEU before stopping; 0 = off.
  # A new best must beat the last one by more than this much BLEU to restart patience (Keras'
  # min_delta): validation BLEU creeps up in steps smaller than its own noise long after the
  # model has stopped learning anything that transfers.
  config.patience_min_delta = 0.0
  config.log_every_steps = 100  # Fetch and write training metrics every N steps.
  # ~1 epoch of 25k-position steps on IWSLT2017 (~4.5 M target tokens / ~23k real a step).
  config.eval_every_steps = 200  # Validation loss and greedy BLEU every N steps.
  config.checkpoint_every_steps = 200  # Save params, optimizer, RNG and data state every N steps.
  config.diagnostics_every_steps = 1_000  # Per-layer gradient/activation norms every N steps.
  config.max_checkpoints_to_keep = 5  # Latest checkpoints kept (the best-BLEU one is kept besides).
  # The study also decodes the mean of the last K checkpoints (Vaswani et al. 2017 average the
  # last 5 for base); 0 = only the best. At most max_checkpoints_to_keep.
  config.average_checkpoints = 5
  config.max_nonfinite_steps = 20  # Stop after this many consecutive NaN/Inf steps.
  config.num_eval_bleu_sentences = 0  # Validation sentences decoded for BLEU; 0 = all.

  # Decoding.
  config.beam_size = 4  # Beam width for test decoding (train-time BLEU is greedy).
  config.length_penalty = 0.6  # GNMT length penalty alpha (Wu et al. 2016).
  config.decode_length_ratio = 1.5  # Max output tokens = ratio * source tokens + offset.
  config.decode_length_offset = 10  # See decode_length_ratio.

  if scale == 'small':
    _make_small(config)
  elif scale == 'bible_base':
    _make_bible_base(config)
  return config


def _make_small(config: ml_collections.ConfigDict) -> None:
  """The embedded Bible corpus and a model that trains in ~10 minutes on 2 CPU cores.

  The architecture is the same, only narrower and shallower; the study sets its own budget
  and data subset on top (transformer/study.py, REGIMES).
  """
  config.dataset_name = 'bible_fr_en'
  config.vocab_size = 4_000
  config.max_length = 128
  config.max_target_length = 112
  config.batch_tokens = 0
  config.batch_size = 16
  config.eval_batch_size = 16
  config.model.dtype = 'float32'
  config.model.emb_dim = 128
  config.model.num_heads = 4
  config.model.num_layers = 3
  config.model.qkv_dim = 128
  config.model.mlp_dim = 512
  config.model.max_len = 256
  config.learning_rate = 1.5e-3
  config.lr_schedule = 'linear'
  config.warmup_steps = 100
  config.num_train_steps = 1_300
  config.max_checkpoints_to_keep = 2
  config.average_checkpoints = 0
  config.log_every_steps = 10
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 100
  config.diagnostics_every_steps = 50
  config.num_eval_bleu_sentences = 200


def _make_bible_base(config: ml_collections.ConfigDict) -> None:
  """Transformer-base on all 28,581 Bible training pairs, for one GPU in bfloat16.

  The corpus is about a quarter of IWSLT2017's target tokens (~1.1 M), so a step is half of
  Vaswani's batch (~90 steps an epoch) and warm-up is 1,000 steps instead of 4,000. The run
  ends when validation BLEU has not improved for `patience` evaluations, within a budget that
  a base model on 1 M tokens over-fits long before. No GPU has run it yet: the budget and
  warm-up are to be checked by a pilot, as the small scale's were.
  """
  config.dataset_name = 'bible_fr_en'
  config.vocab_size = 8_000
  config.batch_tokens = 12_544  # 112 rows of 112 target positions.
  config.learning_rate = 7e-4
  config.warmup_steps = 1_000
  config.num_train_steps = 20_000
  config.patience = 5
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.diagnostics_every_steps = 500
  config.num_eval_bleu_sentences = 0
