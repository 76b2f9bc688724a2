"""The code's layout: imports run one way, configs/ is plain data, one module knows run folders."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).parent.parent
PACKAGE = ROOT / 'transformer'
# Lowest layer first, as in README.md's Layout section: a module imports only earlier ones.
ORDER = ('config_utils', 'cli', 'processes', 'variants', 'provenance', 'sharding', 'metrics', 'plots',
         'significance', 'output_stats', 'study_plan', 'claims', 'datasets', 'tokenizer',
         'input_pipeline', 'norms', 'models', 'flops', 'losses', 'optim', 'search',
         'config_checks', 'steps', 'checkpoints', 'workdir', 'translator', 'training',
         'attention_maps', 'inference', 'verb_object', 'learner', 'learner_report',
         'run_records', 'report_regime', 'report_grid', 'report_tables', 'report', 'study')
# The names of a run folder's and a study folder's files (workdir.py). 'best' and 'latest'
# are left out: they are also the names of --checkpoint's choices.
RUN_FILES = ('config.json', 'vocabulary.model', 'checkpoints', 'corrupt_checkpoints',
             'metrics.jsonl', 'tensorboard', 'plots', 'test_result.json', 'test_hypotheses',
             'REPORT.md', 'test_references.en', 'measurements.json', 'memory_by_length.png')


def imports(path: pathlib.Path) -> set[str]:
  """The modules `path` imports (dotted), at any depth of its code."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
    elif isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
  return found


def package_graph() -> dict[str, set[str]]:
  """{module: the transformer modules it imports}, the datasets/ package as one module."""
  graph = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    name = 'datasets' if parts[0] == 'datasets' else parts[0]
    found = graph.setdefault(name, set())
    for module in imports(path):
      if module.startswith('transformer.'):
        found.add(module.split('.')[1])
  for name in graph:
    graph[name].discard(name)
  return graph


def test_every_module_has_its_place_in_the_order():
  assert set(package_graph()) - {'__init__'} == set(ORDER)


def test_imports_run_one_way():
  rank = {name: i for i, name in enumerate(ORDER)}
  backwards = [(module, dep) for module, deps in package_graph().items() if module in rank
               for dep in deps if rank[dep] >= rank[module]]
  assert not backwards  # Each (module, what it imports) here is a cycle in the making.


def test_configs_are_plain_data():
  """configs/ imports nothing from the package: loading and comparing them is transformer/'s."""
  for path in (ROOT / 'configs').glob('*.py'):
    assert not [m for m in imports(path) if m.split('.')[0] == 'transformer'], path.name


def string_constants(path: pathlib.Path) -> list[str]:
  return [node.value for node in ast.walk(ast.parse(path.read_text()))
          if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_only_workdir_names_the_run_files():
  """Every other module asks workdir.py where a run's files are, so the folder's promises
  (README, "Reliability") are kept in one place."""
  sources = [p for p in ROOT.glob('*.py')] + [
      p for folder in ('transformer', 'benchmarks', 'scripts')
      for p in (ROOT / folder).rglob('*.py')]
  naming = {}
  for path in sources:
    if path.name == 'workdir.py' or path.name == 'setup.py':
      continue
    for text in string_constants(path):
      # Docstrings and messages may mention a file; a path is built from a bare name.
      named = [name for name in RUN_FILES if text == name or text.startswith(name + '.')
               or text.startswith(name + '{') or text.startswith(f'{name}/')]
      if named:
        naming.setdefault(str(path.relative_to(ROOT)), set()).update(named)
  assert not naming


def test_the_check_sees_a_joined_run_file(tmp_path):
  """The check above would catch `os.path.join(workdir, 'metrics.jsonl')`."""
  probe = tmp_path / 'probe.py'
  probe.write_text("import os\npath = os.path.join('w', 'metrics.jsonl')\n")
  assert 'metrics.jsonl' in string_constants(probe)


def test_the_report_reads_run_folders_without_jax():
  """workdir.py loads orbax (and JAX) only with a checkpoint: the report never needs them."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  loaded = subprocess.run(
      [sys.executable, '-c', 'import sys, transformer.report; '
       "print(sorted({'jax', 'orbax', 'flax'} & {m.split('.')[0] for m in sys.modules}))"],
      cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
  assert loaded == '[]'
