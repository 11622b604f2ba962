"""The layout holds: generation's modules import each other without a circle, and
pipeline.py, loading.py and request.py stay free of Django."""

import ast
from pathlib import Path

from tests.helpers import BASE_DIR

GENERATION = BASE_DIR / "generation"


def _module_imports(path: Path) -> set[str]:
    """The generation modules a file imports when it is loaded (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        ".".join(path.relative_to(BASE_DIR).with_suffix("").parts): path
        for path in GENERATION.rglob("*.py")
        if "migrations" not in path.parts
    }
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    return {
        name: {other for other in _module_imports(path) if other in modules and other != name}
        for name, path in modules.items()
    }


def test_no_two_generation_modules_import_each_other_in_a_circle():
    graph = _graph()
    circles = []

    def visit(name, trail):
        for other in sorted(graph[name]):
            if other in trail:
                circles.append(trail[trail.index(other) :] + [other])
            elif other not in done:
                visit(other, [*trail, other])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert circles == [], "import circles: " + "; ".join(" -> ".join(circle) for circle in circles)


def test_the_diffusers_side_imports_nothing_from_django():
    for name in ("pipeline", "loading", "request", "families", "sources", "demo_model"):
        imports = _module_imports(GENERATION / f"{name}.py")
        assert not [module for module in imports if module.split(".")[0] == "django"], name
