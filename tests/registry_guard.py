"""The guard behind ``test_every_registered_loss_has_its_own_test`` and
``test_every_registered_defense_has_its_own_test``: every registry name has a test
listed in a ``{name: "tests/FILE.py::test_function"}`` map, and every entry points at a
registered name and an existing top-level test function."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_functions(path: str) -> set:
    """Names of the top-level functions of a test file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def missing_tests(kind, registered, table, table_name, table_file, advice, example) -> list:
    """Problems between the registry keys ``registered`` (in the order to list them) and
    the map ``table`` named ``table_name`` in ``table_file``, one line each saying what to
    do; ``advice`` says what test to add where, ``example`` the file of the suggested
    entry."""
    problems = [f"{kind} {name!r} has no test: {advice} and list it in {table_name} in "
                f"{table_file} as {name!r}: '{example}::test_{name}_...'"
                for name in registered if name not in table]
    for name, ref in table.items():
        path, _, test = ref.partition("::")
        where = f"{table_name}[{name!r}] = {ref!r} in {table_file}"
        if name not in registered:
            problems.append(f"{where}: no registered {kind} {name!r} (registered: "
                            f"{list(registered)}); remove the entry")
        elif not (path.startswith("tests/") and test and os.path.isfile(os.path.join(ROOT, path))):
            problems.append(f"{where}: write it as 'tests/FILE.py::test_function', an existing "
                            f"file")
        elif test not in test_functions(os.path.join(ROOT, path)):
            problems.append(f"{where}: {path} has no top-level 'def {test}('")
    return problems
