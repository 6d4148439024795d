"""The package's shape: what runs in the app never imports the operations tools, and every module
stays small enough to read in one sitting."""

from __future__ import annotations

import ast
import pathlib

import otel_tokens

PACKAGE = pathlib.Path(otel_tokens.__file__).parent


MAX_LINES = 400


def _imported(path: pathlib.Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__.py, its own)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def test_runtime_never_imports_operations():
    runtime = [p for p in PACKAGE.rglob("*.py") if "ops" not in p.relative_to(PACKAGE).parts]
    assert len(runtime) > 15
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in _imported(p) if m.startswith("otel_tokens.ops"))
                 for p in runtime}
    assert {k: v for k, v in offenders.items() if v} == {}
    ops = [p for p in PACKAGE.rglob("*.py") if "ops" in p.relative_to(PACKAGE).parts]
    assert any({"otel_tokens.recording.recorder", "otel_tokens.quota.file"} & _imported(p) for p in ops)


def test_no_module_over_four_hundred_lines():
    modules = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "grafana").rglob("*.py")]
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in modules}
    assert len(sizes) > 60
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_configuration_imports_nothing_that_runs_on_the_call_path():
    """config/ is read by the runtime, the CLI and the tests alike: it may use the names, the quota
    vocabulary and the logger, never a module that does the work."""
    leaves = {"otel_tokens.names", "otel_tokens.logs", "otel_tokens.quota.vocabulary"}
    offenders = {}
    for path in (PACKAGE / "config").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                used = [a.name for a in node.names if a.name.startswith("otel_tokens")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("otel_tokens"):
                module = node.module or ""
                package = module in ("otel_tokens", "otel_tokens.quota")  # `from otel_tokens import names`
                used = [f"{module}.{a.name}" for a in node.names] if package else [module]
            else:
                continue
            bad = [m for m in used if m not in leaves and not m.startswith("otel_tokens.config")]
            if bad:
                offenders.setdefault(path.name, []).extend(bad)
    assert offenders == {}


def test_few_modules_at_the_top_and_the_quota_code_in_one_package():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= 12, flat
    quota_words = ("guard", "quota", "budget", "ruler")
    assert [name for name in flat if any(word in name for word in quota_words)] == []


def test_tests_share_helpers_only_through_support_and_bench_imports_no_test_code():
    root = PACKAGE.parent
    offenders = {}
    for path in [*root.glob("tests/**/test_*.py"), *root.glob("bench/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                bench = path.parent.name == "bench"
                if (bench and name.split(".")[0] == "tests") or (not bench and ".test_" in f".{name}"):
                    offenders.setdefault(str(path.relative_to(root)), []).append(name)
    assert offenders == {}
