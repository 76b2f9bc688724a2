"""The package's import graph: no cycle, and imports run one way (the README's Layout order)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parent.parent / 'transformer'
# Lowest layer first, as in README.md's Layout section: a module imports only earlier ones.
ORDER = ('config_utils', 'cli', 'provenance', 'sharding', 'metrics', 'plots', 'significance',
         'datasets', 'tokenizer', 'input_pipeline', 'norms', 'models', 'flops', 'losses', 'optim', 'search', 'config_checks',
         'steps', 'checkpoints', 'translator', 'training', 'attention_maps', 'inference',
         'learner', 'report', 'study')


def imports() -> dict[str, set[str]]:
  """{module: the transformer modules it imports}, the datasets/ package as one module."""
  graph = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    name = 'datasets' if parts[0] == 'datasets' else parts[0]
    found = graph.setdefault(name, set())
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('transformer'):
        if node.module == 'transformer':
          found.update(alias.name for alias in node.names)
        else:
          found.add(node.module.split('.')[1])
  for name in graph:
    graph[name].discard(name)
  return graph


def test_every_module_has_its_place_in_the_order():
  assert set(imports()) - {'__init__'} == set(ORDER)


def test_imports_run_one_way():
  rank = {name: i for i, name in enumerate(ORDER)}
  backwards = [(module, dep) for module, deps in imports().items() if module in rank
               for dep in deps if rank[dep] >= rank[module]]
  assert not backwards  # Each (module, what it imports) here is a cycle in the making.
