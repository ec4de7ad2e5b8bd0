"""The package layout holds: no import cycles, the runtime package ``powerstrip`` apart from the
development package ``powerstrip_dev`` (which installs packages and starts daemons), and the
``powerstrip`` subcommands that live in ``powerstrip_dev`` reached only through entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from powerstrip import cli

ROOT = Path(__file__).resolve().parents[2]
#: Package name -> its directory: the runtime, the development tooling, and the example
#: adapters, which install as powerstrip_adapters from adapters/.
PACKAGES = {"powerstrip": "powerstrip", "powerstrip_dev": "powerstrip_dev",
            "powerstrip_adapters": "adapters"}
#: The one runtime module allowed to reach the development package: the test kit's engine
#: fixture starts the throwaway engine, and only when a test asks for it.
DEV_IMPORTER = "powerstrip.kit.testing"


def module_files() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    found = {}
    for package, directory in PACKAGES.items():
        for path in sorted((ROOT / directory).rglob("*.py")):
            parts = (package, *path.relative_to(ROOT / directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def imports(name: str, path: Path) -> Iterator[tuple[str, ast.stmt]]:
    """Every module ``name`` imports, with the statement: at module level, inside functions and
    under ``if TYPE_CHECKING`` alike. ``from P import N`` counts as importing ``P.N`` when that
    is a module, else ``P``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield (submodule if submodule in MODULES else source), node


def graph() -> dict[str, set[str]]:
    """Module -> the modules of the packages it imports."""
    return {
        name: {target for target, _ in imports(name, path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_modules_are_found() -> None:
    assert {"powerstrip.cli", "powerstrip.kit.testing", "powerstrip_dev.rig",
            "powerstrip_adapters.policy"} <= set(MODULES)


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_runtime_package_does_not_import_the_development_package() -> None:
    reaching = {
        f"{name} imports {target} (line {node.lineno})"
        for name, path in MODULES.items() if name.split(".")[0] == "powerstrip"
        for target, node in imports(name, path)
        if target.split(".")[0] == "powerstrip_dev" and name != DEV_IMPORTER
    }
    assert not reaching, "\n".join(sorted(reaching))


#: What each layer of the runtime package may import of Powerstrip besides itself: the
#: protocol core only the hook calls' records (pure, importing nothing); what the proxy
#: reports (observe) the core and those records; the hook engine the core and observe; the
#: Twisted proxy the core, observe and the hook engine; the author's kit those and the
#: address parser its Engine API client shares with the proxy.
LAYERS = {
    "powerstrip.core": ("powerstrip.hooks.wire",),
    "powerstrip.observe": ("powerstrip.core", "powerstrip.hooks.wire"),
    "powerstrip.hooks": ("powerstrip.core", "powerstrip.observe", "powerstrip.plugins"),
    "powerstrip.proxy": ("powerstrip.core", "powerstrip.hooks", "powerstrip.observe"),
    "powerstrip.plugins": ("powerstrip.core", "powerstrip.hooks.wire"),
    "powerstrip.kit": ("powerstrip.core", "powerstrip.hooks", "powerstrip.proxy.addresses",
                       "powerstrip.plugins", "powerstrip_dev", "powerstrip.kit"),
}


def layer_of(name: str) -> str | None:
    return next((layer for layer in LAYERS if name == layer or name.startswith(layer + ".")),
                None)


def test_each_layer_imports_only_the_layers_beneath_it() -> None:
    wrong = set()
    for name, targets in graph().items():
        layer = layer_of(name)
        if layer is None:
            continue
        allowed = (layer, *LAYERS[layer])
        wrong |= {f"{name} imports {target}" for target in targets
                  if not any(target == a or target.startswith(a + ".") for a in allowed)
                  and target not in ("powerstrip",)}
    assert not wrong, "\n".join(sorted(wrong))


def test_the_wire_records_the_core_uses_import_only_plain_records() -> None:
    """The core's exchange uses the wire's records; they may name who the client is (a plain
    record that itself imports nothing), and nothing else of the package."""
    modules = graph()
    assert modules["powerstrip.hooks.wire"] <= {"powerstrip.core.identity"}
    assert not modules["powerstrip.core.identity"]


def test_the_example_adapters_import_nothing_of_the_development_package() -> None:
    reaching = {
        f"{name} imports {target}"
        for name, path in MODULES.items() if name.split(".")[0] == "powerstrip_adapters"
        for target, _ in imports(name, path) if target.split(".")[0] == "powerstrip_dev"
    }
    assert not reaching, "\n".join(sorted(reaching))


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter of this environment, from the repository."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_importing_the_proxy_loads_nothing_of_the_development_package() -> None:
    result = run_python(
        "import sys\n"
        "import powerstrip.proxy.connection, powerstrip.cli, powerstrip.hooks.live\n"
        "powerstrip_cli = sys.modules['powerstrip.cli']\n"
        "powerstrip_cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'powerstrip_dev'))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def runtime_imports(path: Path) -> Iterator[ast.stmt]:
    """The import statements that run when the module at ``path`` is imported: not those in
    functions, nor those under ``if TYPE_CHECKING``."""
    pending: list[ast.AST] = list(ast.parse(path.read_text(), str(path)).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                     "typing.TYPE_CHECKING"):
            pending.extend(node.orelse)
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))


def test_the_test_kit_imports_the_throwaway_engine_only_when_it_starts_one() -> None:
    path = MODULES[DEV_IMPORTER]
    run_at_import = {node.lineno for node in runtime_imports(path)}
    eager = {target for target, node in imports(DEV_IMPORTER, path)
             if node.lineno in run_at_import}
    assert "powerstrip.kit.sdk" in eager  # the walk sees the module-level imports
    assert not {target for target in eager if target.startswith("powerstrip_dev.engine")}, eager
    result = run_python(
        "import sys\n"
        "import powerstrip.testing\n"
        "print('powerstrip_dev.engine' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_test_kit_imports_without_pytest() -> None:
    """The in-process calls serve scripts and other runners: no pytest needed, and then no
    fixtures either."""
    result = run_python(
        "import sys\n"
        "sys.modules['pytest'] = None  # as if it were not installed\n"
        "import powerstrip.testing\n"
        "from powerstrip.testing import call_pre\n"
        "from powerstrip.adapter import Adapter\n"
        "app = Adapter('t')\n"
        "app.pre('POST /*/containers/create')(lambda request: None)\n"
        "assert call_pre(app, 'POST', '/v1.41/containers/create', {}).status == 200\n"
        "fixtures = ('adapter_process', 'docker_engine', 'powerstrip_proxy')\n"
        "print(sorted(set(fixtures) & set(dir(powerstrip.testing))))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_with_pytest_the_test_kit_exports_its_fixtures() -> None:
    import powerstrip.testing
    from powerstrip.kit.testing import FIXTURES

    assert set(FIXTURES) == {"adapter_process", "docker_engine", "powerstrip_proxy"}
    assert set(FIXTURES) <= set(powerstrip.testing.__all__)
    for name in FIXTURES:
        assert callable(getattr(powerstrip.testing, name))


# -- the subcommands the development package adds -------------------------------------------


def test_the_development_subcommands_are_registered_entry_points() -> None:
    added = cli.added_commands()
    assert {name: entry.value for name, entry in added.items()} == {
        "engine": "powerstrip_dev.engine:main",
        "run": "powerstrip_dev.rig:main",
        "demo": "powerstrip_dev.demo:main",
    }


def test_the_help_lists_them() -> None:
    shown = cli.build_parser().format_help()
    for name in ("serve", "check", "engine", "run", "demo"):
        assert name in shown


def test_a_subcommand_gets_everything_after_its_name() -> None:
    result = subprocess.run([sys.executable, "-m", "powerstrip", "engine", "--help"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "start" in result.stdout and "--root" in result.stdout


def fake_entry_points(*entries: EntryPoint):  # noqa: ANN201 - a stand-in for entry_points
    def select(group: str) -> list[EntryPoint]:
        return [e for e in entries if e.group == group]

    return select


def test_a_subcommand_whose_package_is_missing_says_so(monkeypatch, capsys) -> None:
    ghost = EntryPoint("ghost", "powerstrip_ghost.tool:main", cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "entry_points", fake_entry_points(ghost))
    assert cli.main(["ghost", "start"]) == 2
    error = capsys.readouterr().err
    assert "the ghost command needs powerstrip_ghost.tool, which is not installed" in error


def test_a_broken_import_inside_a_subcommand_is_not_mistaken_for_a_missing_package(
    monkeypatch, tmp_path
) -> None:
    (tmp_path / "broken_tool.py").write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = EntryPoint("broken", "broken_tool:main", cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "entry_points", fake_entry_points(broken))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_here"):
        cli.main(["broken"])


def test_an_entry_point_cannot_replace_a_builtin_command(monkeypatch) -> None:
    impostor = EntryPoint("serve", "powerstrip_ghost:main", cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "entry_points", fake_entry_points(impostor))
    assert cli.added_commands() == {}


def test_a_subcommand_gets_its_arguments_and_runs_after_global_options_too(monkeypatch) -> None:
    seen: list[list[str]] = []
    tool = EntryPoint("tool", "tests.unit.test_layout:record_tool", cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "entry_points", fake_entry_points(tool))
    monkeypatch.setattr(sys.modules[__name__], "RECORDED", seen)
    assert cli.main(["tool", "--flag", "x"]) == 3
    assert cli.main(["-v", "tool"]) == 3
    assert seen == [["--flag", "x"], []]


RECORDED: list[list[str]] = []


def record_tool(argv: list[str]) -> int:
    """An added subcommand for the test above: records its arguments."""
    RECORDED.append(argv)
    return 3


# -- the example adapters: adapters/ is the package powerstrip_adapters -----------------------


def test_the_examples_are_one_package_under_two_names() -> None:
    import powerstrip_adapters
    import powerstrip_adapters.policy

    import adapters.policy

    assert Path(powerstrip_adapters.__file__).parent == ROOT / "adapters"
    assert Path(powerstrip_adapters.policy.__file__) == Path(adapters.policy.__file__)
    assert powerstrip_adapters.policy.EXAMPLE_RULES == ROOT / "adapters" / "policy.yml"


def test_a_bare_example_name_is_the_examples_own_command_line() -> None:
    import powerstrip_adapters

    from powerstrip.kit.sdk import example_command

    for name in ("debug", "volumes", "network", "policy"):
        command = example_command(name)
        assert command is not None and command.__module__ == f"powerstrip_adapters.{name}"
    assert set(powerstrip_adapters.EXAMPLES) == {"debug", "volumes", "network", "policy"}
    assert example_command("null_adapter") is None  # a standard-library script, not the SDK's
    assert example_command("no_such_adapter") is None


def test_powerstrip_adapter_runs_an_example_by_name(monkeypatch) -> None:
    import powerstrip_adapters.policy

    from powerstrip.kit import sdk

    seen: list[list[str]] = []
    monkeypatch.setattr(powerstrip_adapters.policy, "main", seen.append)
    monkeypatch.setattr(sys, "path", list(sys.path))
    sdk.main(["policy", "--listen", "127.0.0.1:0"])
    assert seen == [["--listen", "127.0.0.1:0"]]


def test_a_module_of_the_users_wins_over_the_example_of_that_name(monkeypatch, tmp_path) -> None:
    from powerstrip.kit import sdk

    (tmp_path / "policy.py").write_text(
        "from powerstrip.adapter import Adapter\napp = Adapter('mine')\n")
    served: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(sdk.Adapter, "run", lambda self, argv: served.append((self.name, argv)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "policy", raising=False)
    try:
        sdk.main(["policy", "--listen", "127.0.0.1:0"])
    finally:
        sys.modules.pop("policy", None)
    assert served == [("mine", ["--listen", "127.0.0.1:0"])]


def test_a_name_that_is_neither_still_fails_as_before(monkeypatch, tmp_path) -> None:
    from powerstrip.kit import sdk

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ModuleNotFoundError, match="no_such_adapter"):
        sdk.main(["no_such_adapter", "--listen", "127.0.0.1:0"])


def test_the_examples_still_run_as_scripts() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "adapters" / "policy.py"), "--help"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "--rules" in result.stdout
