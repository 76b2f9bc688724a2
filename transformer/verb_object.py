"""Which sentences show a verb and its object, and what attention does with them.

A rule, not a choice: a French source qualifies when a verb of VERBS is followed, over at most
MAX_BETWEEN determiners (BETWEEN), by a noun of OBJECTS, and the model's own translation has
one of the verb's English forms followed later by one of the noun's. The lists are frequent
verb and noun forms of the Bible (Louis Segond -> World English Bible), written once here, so
the same sentences qualify for every model that translates them alike.

Attention is read against controls that a position habit alone would satisfy (`reading`):
  - cross-attention: the row that writes the English object, on the French object's pieces,
    against the same row on the pieces where a monotone (diagonal) alignment would look;
  - decoder self-attention: the object's row on the verb's translation, against the mean of
    every row at the same distance back (distance 0 is the query's own input, the previous
    output token: the habit the first reading mistook for attention to the verb).
No JAX here: learner.py computes the weights, and the tests check this on hand-made arrays.
"""

import re
from typing import NamedTuple, Optional, Sequence

import numpy as np

from transformer import output_stats

# French form -> its English forms in the World English Bible.
VERBS = {
    'prit': ('took',), 'prirent': ('took',), 'prends': ('take',), 'prenez': ('take',),
    'prendre': ('take',), 'pris': ('taken', 'took'), 'donna': ('gave',),
    'donnèrent': ('gave',), 'donne': ('give', 'gives'), 'donnerai': ('give',),
    'donné': ('given', 'gave'), 'rendit': ('gave', 'rendered'), 'bâtit': ('built',),
    'bâtirent': ('built',), 'bâti': ('built',), 'bâtir': ('build',), 'enfanta': ('bore',),
    'vit': ('saw',), 'virent': ('saw',), 'vois': ('see',), 'voyez': ('see',),
    'vu': ('seen', 'saw'), 'entendit': ('heard',), 'entendirent': ('heard',),
    'entendis': ('heard',), 'entendu': ('heard',), 'écoute': ('hear', 'listen'),
    'écoutez': ('hear', 'listen'), 'fit': ('made', 'did'), 'fait': ('made', 'done', 'did'),
    'offrit': ('offered',), 'offrirent': ('offered',), 'leva': ('lifted',),
    'levèrent': ('lifted',), 'levai': ('lifted',), 'levé': ('lifted',),
    'frappa': ('struck', 'smote'), 'mangea': ('ate',), 'mangèrent': ('ate',),
    'boire': ('drink',), 'burent': ('drank',), 'envoya': ('sent',), 'tua': ('killed', 'slew'),
    'ouvrit': ('opened',), 'ouvre': ('open',), 'étendit': ('stretched',), 'garde': ('keep',),
    'gardez': ('keep',), 'observez': ('keep', 'observe'), 'aime': ('love', 'loves'),
    'dressa': ('pitched', 'set'), 'appela': ('called',), 'appelé': ('called',),
    'brûla': ('burned', 'burnt'), 'détruisit': ('destroyed',), 'jeta': ('cast', 'threw'),
    'jeté': ('cast', 'thrown'), 'bénit': ('blessed',), 'béni': ('blessed',),
    'servir': ('serve',), 'servirent': ('served',), 'craignez': ('fear',),
    'cherchez': ('seek',), 'abandonné': ('forsaken', 'forsook'),
    'abandonnèrent': ('forsook',), 'sauva': ('saved',), 'consacra': ('consecrated',),
    'profané': ('profaned',), 'vis': ('saw',), 'entendre': ('hear',), 'bénir': ('bless',),
    'mange': ('eat', 'eats'), 'répara': ('repaired',), 'donner': ('give',),
    'donneras': ('give',), 'étend': ('stretches',), 'tend': ('stretches',),
    'écouté': ('listened', 'heard'), 'posséderont': ('possess', 'inherit'),
    'possèdent': ('possess',), 'mit': ('put', 'set'), 'mis': ('put', 'set'),
    'louent': ('praise',), 'élève': ('lift', 'lifts'), 'élevait': ('lifted',),
    'jetteront': ('cast', 'throw'), 'rejetèrent': ('rejected',), 'gardé': ('kept',),
}
# French noun -> its English forms.
OBJECTS = {
    'fils': ('son', 'sons'), 'fille': ('daughter',), 'filles': ('daughters',),
    'femme': ('wife', 'woman'), 'pain': ('bread',), 'maison': ('house',), 'autel': ('altar',),
    'voix': ('voice',), 'yeux': ('eyes',), 'main': ('hand',), 'mains': ('hands',),
    'ville': ('city',), 'villes': ('cities',), 'parole': ('word',), 'paroles': ('words',),
    'épée': ('sword',), 'tente': ('tent',), 'brebis': ('sheep',),
    'holocauste': ('offering',), 'holocaustes': ('offerings',), 'sacrifice': ('sacrifice',),
    'sacrifices': ('sacrifices',), 'eau': ('water',), 'argent': ('silver', 'money'),
    'or': ('gold',), 'terre': ('land', 'earth', 'ground'), 'pays': ('land', 'country'),
    'peuple': ('people',), 'nom': ('name',), 'loi': ('law',), 'lois': ('laws',),
    'alliance': ('covenant',), 'feu': ('fire',), 'coeur': ('heart',), 'porte': ('gate', 'door'),
    'roi': ('king',), 'ciel': ('heaven', 'sky'), 'cieux': ('heavens',), 'homme': ('man',),
    'hommes': ('men',), 'enfants': ('children',), 'chair': ('flesh',), 'sang': ('blood',),
    'vin': ('wine',), 'bouche': ('mouth',), 'commandements': ('commandments',),
    'ordonnances': ('ordinances', 'statutes'), 'serviteur': ('servant',),
    'serviteurs': ('servants',), 'idoles': ('idols',), 'livre': ('book',),
    'frères': ('brothers',), 'lévites': ('levites',), 'justice': ('righteousness', 'justice'),
    'nourriture': ('food',), 'pierre': ('stone',), 'montagne': ('mountain',),
    'esprit': ('spirit',), 'lampe': ('lamp',), 'messagers': ('messengers',),
    'vigne': ('vineyard',), 'portes': ('gates', 'doors'), 'peuples': ('peoples', 'nations'),
    'fruit': ('fruit',), 'oeuvres': ('works',), 'royaume': ('kingdom',), 'choses': ('things',),
}
# Words allowed between the verb and its object: determiners and a few quantifiers.
BETWEEN = frozenset(
    'le la les l un une des du de d sa son ses leur leurs mon ma mes ton ta tes notre votre '
    'nos vos ce cet cette ces au aux tout toute tous toutes second'.split())
MAX_BETWEEN = 2
# After these the subject may follow the verb ("ce que fit l'Éternel"), so a noun after the
# verb is not read as its object; CLITICS (pronouns, auxiliaries) may stand between.
INVERTING = frozenset('que qu comme où dont ainsi'.split())
CLITICS = frozenset(
    'l le la les lui leur en y se s me m te t nous vous a ont avait avaient eut'.split())


class Word(NamedTuple):
  text: str  # Lower-cased run of letters/digits (\w+) of the detokenized text.
  pieces: list[int]  # Positions of the pieces that spell it.


def words_of(pieces: Sequence[str]) -> list[Word]:
  """The \\w+ words of the text the pieces spell ('▁' = space), each with its pieces.

  Words are found in the text, not piece by piece, so "l'autel" gives "l" and "autel"
  whichever way sentencepiece cut it; a piece that holds parts of two words belongs to both.
  """
  text, starts = '', []
  for piece in pieces:
    starts.append(len(text))
    text += piece.replace('▁', ' ')
  ends = starts[1:] + [len(text)]
  return [Word(m.group().lower(), [i for i, (a, b) in enumerate(zip(starts, ends))
                                   if a < m.end() and b > m.start()])
          for m in re.finditer(r'\w+', text)]


def _inverted(words: Sequence[Word], verb: int) -> bool:
  """Whether the verb follows a word after which French puts the subject behind the verb
  ("comme l'a fait mon serviteur Job": Job did it), past clitics and auxiliaries."""
  i = verb - 1
  while i >= 0 and words[i].text in CLITICS:
    i -= 1
  return i >= 0 and words[i].text in INVERTING


def find_french_pairs(words: Sequence[Word]) -> list[tuple[int, int]]:
  """(verb, object) word indices of every verb of VERBS whose object follows, in order."""
  pairs = []
  for i, word in enumerate(words):
    if word.text not in VERBS or _inverted(words, i):
      continue
    for j in range(i + 1, min(i + 2 + MAX_BETWEEN, len(words))):
      if words[j].text in OBJECTS:
        pairs.append((i, j))
        break
      if words[j].text not in BETWEEN:
        break
  return pairs


def find_french_pair(words: Sequence[Word]) -> Optional[tuple[int, int]]:
  """The first of find_french_pairs, or None."""
  pairs = find_french_pairs(words)
  return pairs[0] if pairs else None


def find_english_pair(words: Sequence[Word], verb: str, obj: str) -> Optional[tuple[int, int]]:
  """(verb, object) word indices in a translation: the first English form of the French
  verb, then the first English form of its object after it; None if either is missing."""
  for i, word in enumerate(words):
    if word.text in VERBS[verb]:
      for j in range(i + 1, len(words)):
        if words[j].text in OBJECTS[obj]:
          return i, j
      return None
  return None


def loops(translation: str) -> bool:
  """A translation that repeats a word 4-gram: its attention is not a translator's."""
  return output_stats.repeats_ngram(translation)


def diagonal_span(row: int, rows: int, columns: int, width: int) -> list[int]:
  """`width` source positions centred where a monotone alignment puts output `row`.

  The diagonal maps output 0 to source 0 and the last output (eos) to the last source (eos):
  round(row * (columns - 1) / (rows - 1)).
  """
  centre = round(row * (columns - 1) / max(rows - 1, 1))
  start = min(max(centre - (width - 1) // 2, 0), columns - width)
  return list(range(start, start + width))


def reading(cross: np.ndarray, decoder_self: np.ndarray, source_object: Sequence[int],
            t_object: int, target_verb: Sequence[int]) -> dict:
  """The attention of one sentence on its object and verb, beside position-only controls.

  `cross` [outputs, sources] and `decoder_self` [outputs, outputs] are one layer's weights
  (heads' mean); row t writes output t (t_object: the English object's first piece), and
  decoder key k holds output k - 1 (key 0 is BOS), so the verb's translation (outputs
  `target_verb`, before t_object) is keys p + 1. Ratios are to uniform attention over the
  keys a row can see: a source word of n pieces gets n / sources, m keys of row t get
  m / (t + 1). The self-attention control is every row's weight on keys at the same
  distances back as the verb's from the object's row.
  """
  outputs, sources = cross.shape
  width = len(source_object)
  diagonal = diagonal_span(t_object, outputs, sources, width)
  on_object = float(cross[t_object, source_object].sum())
  on_diagonal = float(cross[t_object, diagonal].sum())
  distances = [t_object - (p + 1) for p in target_verb]  # 0: the row's own input.
  on_verb = float(sum(decoder_self[t_object, t_object - d] for d in distances))

  def control(ds: Sequence[int]) -> float:
    """Mean over rows of (weight on the keys ds back) / uniform."""
    rows = range(max(ds), outputs)
    return float(np.mean([sum(decoder_self[t, t - d] for d in ds) * (t + 1) / len(ds)
                          for t in rows]))

  return {
      'cross_on_object': on_object, 'cross_on_diagonal': on_diagonal,
      'uniform_cross': width / sources,
      'cross_object_ratio': on_object * sources / width,
      'cross_diagonal_ratio': on_diagonal * sources / width,
      'diagonal_overlaps_object': bool(set(diagonal) & set(source_object)),
      'distance': min(distances),
      'self_on_verb': on_verb,
      'self_verb_ratio': on_verb * (t_object + 1) / len(distances),
      'self_same_distance_ratio': control(distances),
      'self_previous_token_ratio': control([0]),
  }
