"""The package keeps its layout rules: every module of driver/ is read with ``ast``.

- no module over 600 lines;
- no ``Any`` (``typing.Any``, or a module's alias of it) in a parameter or return
  annotation: untyped data is ``object``, narrowed where it is read;
- no import from ``driver`` inside a function body, except those in ALLOWED below,
  each with its reason.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "driver"
MAX_LINES = 600

# Function-local imports from driver: (module path, function, imported module pattern).
# Each stage is a fresh interpreter and `run` is started once per stage, its start-up
# counted (docs/figures.md): these keep pydantic and the other commands off paths that do
# not need them (`python -X importtime -c "import driver.main, driver.stages.run"`).
START_UP = "start-up: keeps the module off the run stage's (or another command's) imports"
ALLOWED: dict[tuple[str, str, str], str] = {
    # Each entrypoint imports only its own command's module.
    ("driver/main.py", "command", "driver.stages.*"): START_UP,
    ("driver/main.py", "command", "driver.commands.*"): START_UP,
    ("driver/main.py", "main", "driver.stages.run"): "the run stage's fast path, before argparse",
    ("driver/main.py", "claimed_by_pool_service", "driver.stages.prepare_fast"): (
        "prepare's fast path (the pool service claims), before argparse"
    ),
    # metrics_textfile imports settings (pydantic), only after prepare, cleanup and sweep.
    ("driver/main.py", "_write_metrics_textfile", "driver"): START_UP,
    # The payload's pydantic models: `run` imports contract but reads no job payload.
    ("driver/contract.py", "read_job", "driver.payload"): START_UP,
    # Only after a failure, or when the stage runs by hand: the success path stays lean.
    ("driver/stages/run.py", "_log_failure", "driver"): START_UP,
    ("driver/stages/run.py", "_probe", "driver"): START_UP,
    ("driver/stages/run.py", "_job_dir_from_config", "driver.settings"): START_UP,
    # Image mode's modules and the Docker SDK, only when image mode is on: a pool claim
    # in the VM's shell does not pay for them (docs/pool.md, where a claim's time goes).
    ("driver/stages/prepare.py", "_image_plan", "driver.engine"): START_UP,
    ("driver/stages/prepare.py", "_image_plan", "driver.image.*"): START_UP,
    ("driver/stages/prepare.py", "_start_containers", "driver.image"): START_UP,
}


def modules(root: Path) -> Iterator[tuple[str, ast.Module, int]]:
    """(path relative to root's parent, its tree, its line count) for each module."""
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        yield str(path.relative_to(root.parent)), ast.parse(text, str(path)), len(text.splitlines())


def any_names(tree: ast.Module) -> set[str]:
    """The names that mean Any in this module: Any itself, an import of it under another
    name, and module-level aliases whose value mentions one of those."""
    names = {"Any"}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in ("typing", "typing_extensions"):
            names |= {a.asname for a in node.names if a.name == "Any" and a.asname}
    for node in tree.body:  # in order: an alias may build on an earlier one
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and value is not None and mentions(value, names):
            names.add(target.id)
    return names


def mentions(annotation: ast.expr, names: set[str]) -> bool:
    """Whether ``annotation`` (quoted or not) names one of ``names`` or ``<module>.Any``."""
    for node in ast.walk(annotation):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                quoted = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                continue
            if mentions(quoted, names):
                return True
        if isinstance(node, ast.Name) and node.id in names:
            return True
        if isinstance(node, ast.Attribute) and node.attr == "Any":
            return True
    return False


def functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def signature_annotations(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.expr]:
    args = function.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    yield from (a.annotation for a in every if a.annotation is not None)
    if function.returns is not None:
        yield function.returns


def local_imports(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[int, str]]:
    """(line, module) of each import from driver in the function's body."""
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level or module == "driver" or module.startswith("driver."):
                yield node.lineno, module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "driver" or alias.name.startswith("driver."):
                    yield node.lineno, alias.name


def allowed(path: str, function: str, module: str, allow: dict[tuple[str, str, str], str]) -> bool:
    return any(
        (path, function) == (p, f) and fnmatch.fnmatchcase(module, pattern)
        for p, f, pattern in allow
    )


def problems(root: Path, allow: dict[tuple[str, str, str], str]) -> list[str]:
    found = []
    for path, tree, lines in modules(root):
        if lines > MAX_LINES:
            found.append(f"{path}: {lines} lines, over {MAX_LINES}: split it")
        names = any_names(tree)
        for function in functions(tree):
            found += [
                f"{path}:{annotation.lineno}: {function.name}() has Any in its signature "
                f"({ast.unparse(annotation)}): take object and narrow it, or a Protocol"
                for annotation in signature_annotations(function)
                if mentions(annotation, names)
            ]
            # A nested function's imports are its own (ast.walk sees them from its parent too).
            nested = {
                (line, module)
                for inner in functions(ast.Module(body=function.body, type_ignores=[]))
                for line, module in local_imports(inner)
            }
            found += [
                f"{path}:{line}: {function.name}() imports {module} in its body: import it at "
                "the top of the module (or add it to ALLOWED with the reason)"
                for line, module in local_imports(function)
                if (line, module) not in nested and not allowed(path, function.name, module, allow)
            ]
    return found


def test_every_module_of_driver_keeps_the_layout_rules() -> None:
    assert problems(DRIVER, ALLOWED) == []


def test_every_allowed_import_is_still_there() -> None:
    """An entry of ALLOWED that nothing uses any more is removed, not left to grow stale."""
    used = set()
    for path, tree, _ in modules(DRIVER):
        for function in functions(tree):
            for _, module in local_imports(function):
                used |= {
                    key
                    for key in ALLOWED
                    if key[:2] == (path, function.name) and fnmatch.fnmatchcase(module, key[2])
                }
    assert sorted(set(ALLOWED) - used) == []


PLANTED = """\
from typing import Any as Whatever
import typing

Data = dict[str, Whatever]


def plain(value: object) -> object:
    return value


def takes(value: Any) -> None:
    pass


def gives() -> typing.Any:
    pass


def quoted(*args: "list[Any]", **kwargs: Data) -> None:
    from driver import log

    def inner() -> None:
        from driver.state import StateDir
"""


def test_the_rules_find_planted_violations_by_file_and_line(tmp_path: Path) -> None:
    package = tmp_path / "driver"
    package.mkdir()
    (package / "planted.py").write_text(PLANTED)
    (package / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (package / "short.py").write_text("x = 1\n" * MAX_LINES)
    found = problems(package, {})
    assert [line.split(" ", 1)[0] for line in found] == [
        "driver/long.py:",  # 601 lines; 600 is still fine
        "driver/planted.py:11:",  # Any
        "driver/planted.py:15:",  # typing.Any
        "driver/planted.py:19:",  # "list[Any]", quoted
        "driver/planted.py:19:",  # Data, an alias of it
        "driver/planted.py:20:",  # from driver import log
        "driver/planted.py:23:",  # from driver.state ..., in a nested function
    ]
    assert "quoted() imports driver in its body" in found[5]
    assert "inner() imports driver.state in its body" in found[6]
    allow = {("driver/planted.py", "quoted", "driver"): "a reason"}
    assert len(problems(package, allow)) == len(found) - 1


def test_benchmarks_import_the_harness_as_packages() -> None:
    """bench/ runs as `python -m bench.NAME` from the repository: no sys.path edits."""
    edits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "bench").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "sys.path.insert" in line or "sys.path.append" in line
    ]
    assert edits == []
