"""The package's layering, read from the source (every import, module-level or inside a
function): no cycles, and no module imports one of a higher layer.

Top to bottom: the command line and launchers -> workflows (train, evaluate, export, predict,
prepare) -> experiment builders and scoring -> config loading and checks -> the step, models,
input pipeline, metrics -> the method's pieces and infrastructure (frequency, distill, sharding,
checkpoint, the CPU backend) -> errors and file helpers.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mkln_jax"

# First match wins; a module's layer is that of the longest matching prefix.
LAYERS = {
    6: ("mkln_jax.cli", "mkln_jax.launch"),
    5: (
        "mkln_jax.train",
        "mkln_jax.evaluate",
        "mkln_jax.export",
        "mkln_jax.onnx_export",
        "mkln_jax.savedmodel_export",
        "mkln_jax.predict",
        "mkln_jax.input_pipeline.prepare",
    ),
    4: ("mkln_jax.experiment", "mkln_jax.scoring", "mkln_jax.population", "mkln_jax.aot"),
    3: ("mkln_jax.config_lib", "mkln_jax.configs"),
    2: (
        "mkln_jax.step",
        "mkln_jax.models",
        "mkln_jax.input_pipeline",
        "mkln_jax.metrics",
        "mkln_jax.perturb",
        "mkln_jax.logging_utils",
    ),
    1: (
        "mkln_jax.frequency",
        "mkln_jax.distill",
        "mkln_jax.sharding",
        "mkln_jax.checkpoint",
        "mkln_jax.workdir",
        "mkln_jax.fetch",
        "mkln_jax.distributed",
        "mkln_jax.backends",
        "mkln_jax.tracking",
    ),
    0: ("mkln_jax.errors", "mkln_jax.fileio", "mkln_jax"),
}


def layer(module: str) -> int:
    best, rank = "", None
    for level, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, level
    assert rank is not None, f"{module} has no layer: add it to LAYERS"
    return rank


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(known: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in known.items():
        targets = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name if is_package else name.rsplit(".", 1)[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rsplit(".", 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in known else base)
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycles():
    found = cycles(import_graph(modules()))
    assert not found, f"import cycles: {found}"


def test_no_module_imports_a_higher_layer():
    graph = import_graph(modules())
    upward = [
        f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
        for src, targets in graph.items()
        for dst in targets
        if layer(dst) > layer(src)
    ]
    assert not upward, "\n".join(upward)


def test_the_checker_sees_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
