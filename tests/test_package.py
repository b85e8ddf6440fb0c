import anomaly_vae


def test_all_is_honest():
    assert sorted(anomaly_vae.__all__) == sorted(set(anomaly_vae.__all__))
    for name in anomaly_vae.__all__:
        assert hasattr(anomaly_vae, name), name
    public = {n for n in dir(anomaly_vae) if not n.startswith("_") and not isinstance(getattr(anomaly_vae, n), type(anomaly_vae))}
    assert public <= set(anomaly_vae.__all__)


def test_cli_choices_match_the_core():
    from anomaly_vae import cli, objectives, scoring

    assert cli.LIKELIHOODS == objectives.LIKELIHOODS and cli.SCORES == scoring.SCORES


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, anomaly_vae, anomaly_vae.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def _import_graph():
    """Edges module -> module of the package's own imports (module level and inside functions;
    not those under ``if TYPE_CHECKING:``, which never run)."""
    import ast
    from pathlib import Path

    root = Path(anomaly_vae.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, parts[-1] == "__init__")
    graph = {}
    for name, (path, is_pkg) in modules.items():
        package = name if is_pkg else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_no_import_cycle_in_the_package():
    graph = _import_graph()
    assert "anomaly_vae.detector" in graph and "anomaly_vae.io.tables" in graph  # the graph is real
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_over_400_lines_without_a_reason():
    """DESIGN's few hundred lines: a longer module says why in its docstring."""
    import ast
    from pathlib import Path

    root = Path(anomaly_vae.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 420:
            doc = ast.get_docstring(ast.parse(text)) or ""
            assert "longer than" in doc or "Why this module is long" in doc, f"{path.name}: {text.count(chr(10))} lines"


def test_a_parallel_test_worker_runs_torch_on_its_share_of_the_cpus(thread_share):
    """Under `make test` (pytest-xdist), tests/conftest.py gives each worker's torch, and the processes
    its tests start, its share of the CPUs: with a thread a CPU in each, two workers on 2 CPUs ran
    the suite 1.5x slower than one process."""
    import os

    import pytest
    import torch

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("not in a pytest-xdist worker: torch keeps its default here")
    if thread_share is None:
        pytest.skip("OMP_NUM_THREADS was set by the caller, and kept")
    assert os.environ["OMP_NUM_THREADS"] == str(thread_share)
    assert torch.get_num_threads() == thread_share >= 1
