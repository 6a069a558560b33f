"""The README and the docs say only what is true: every code block of every page runs as written, links point to
files that exist, the README stays a landing page, the API reference lists the public API, the install line is one
that works, the docs hold no machine paths, the CLI example names its own option offline, and regenerating the
benchmark page keeps its hand-written summary.

The pages are the README and every Markdown file under ``docs/`` (the site, ``make docs``). Their code blocks:

- ```python: runs as written, in a fresh namespace, in a fresh process per page with no GPU visible (a block may build
  ``Trainer(devices=8)`` but must not fit on 8 devices). A comment line right after a ``print(...)`` line is output it
  must print.
- ```pycon: an interactive session, run as a doctest (ELLIPSIS).
- ```bash: run with ``bash -e -o pipefail`` in a scratch folder holding a copy of ``examples/`` (and an empty
  ``docs/``), with this interpreter's ``python`` first on the PATH; it must exit 0.
- ```yaml: parsed; every ``class_path`` in it is built with its ``init_args``.
- ```text: output shown, not code. MyST directives (```{toctree} …) are not code either.
- A block right after a line ``<!-- not-runnable: <reason> -->`` is not run; the reason is required.
- Any other fence, or one without a language, fails: every block says what it is.

The Sphinx build (``make docs``) checks the anchors of links and the cross-references; the tests here need no build.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import lightning_lrbs

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
REFERENCE = DOCS / "reference" / "index.md"
NOT_RUNNABLE = re.compile(r"\s*<!-- not-runnable:(.*?)-->\s*$")  # a line of its own
RUN = ("python", "pycon", "bash", "yaml")
SHOWN = ("text",)
README_MAX_LINES = 250
HAS_EMA = hasattr(importlib.import_module("lightning.pytorch.callbacks"), "EMAWeightAveraging")

DRIVER = r"""
import contextlib, doctest, importlib, io, json, sys, traceback

def build(node):
    if isinstance(node, dict):
        if "class_path" in node:
            module, _, name = node["class_path"].rpartition(".")
            getattr(importlib.import_module(module), name)(**(node.get("init_args") or {}))
        for value in node.values():
            build(value)
    elif isinstance(node, list):
        for value in node:
            build(value)

def run(language, code, out):
    namespace = {"__name__": "__docs__"}
    if language == "python":
        exec(compile(code, "<docs block>", "exec"), namespace)
    elif language == "pycon":
        test = doctest.DocTestParser().get_doctest(code, namespace, "<docs block>", None, 0)
        assert test.examples, "a pycon block without a >>> line"
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test, out=out.write)
        assert not runner.failures, out.getvalue()
    elif language == "yaml":
        import yaml
        build(yaml.safe_load(code))

results = []
for language, code in json.loads(sys.stdin.read()):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            run(language, code, out)
        results.append({"ok": True, "stdout": out.getvalue()})
    except ModuleNotFoundError as error:
        results.append({"ok": False, "missing": error.name, "error": traceback.format_exc(), "stdout": out.getvalue()})
    except BaseException:
        results.append({"ok": False, "missing": None, "error": traceback.format_exc(), "stdout": out.getvalue()})
print("@@RESULTS@@" + json.dumps(results))
"""


@dataclass(frozen=True)
class Block:
    """A fenced block of a page: its first code line (1-based), its language, its code and, if it is marked
    not-runnable, the reason given (``""`` when the marker gives none)."""

    line: int
    language: str
    code: str
    not_runnable: str | None = None


def pages() -> list[Path]:
    """The README and every Markdown page under ``docs/`` (not the build output)."""
    found = sorted(p for p in DOCS.rglob("*.md") if not {"_build", "generated"} & set(p.relative_to(DOCS).parts))
    return [README, *found]


def page_id(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` (indented ones too, dedented)."""
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        stripped = lines[index].lstrip()
        if stripped.startswith("```"):
            fence = stripped[: len(stripped) - len(stripped.lstrip("`"))]
            indent = len(lines[index]) - len(stripped)
            end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == fence), len(lines))
            code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
            marker = NOT_RUNNABLE.match(lines[index - 1]) if index > 0 else None
            reason = marker.group(1).strip() if marker else None
            blocks.append(Block(index + 2, stripped[len(fence) :].strip(), code, reason))
            index = end
        index += 1
    return blocks


def expected_output(code: str) -> list[str]:
    """The comment lines right after a ``print(...)`` line: what the block must print."""
    lines = code.splitlines()
    return [
        line.removeprefix("# ")
        for previous, line in zip(lines, lines[1:])
        if line.startswith("# ") and re.match(r"(\w+\.)?print\(", previous)
    ]


def runnable(page: Path) -> list[Block]:
    return [b for b in fenced_blocks(page.read_text()) if b.language in RUN and b.not_runnable is None]


def test_the_block_parser() -> None:
    text = (
        "x\n<!-- not-runnable: needs 8 GPUs -->\n```python\nraise SystemExit(1)\n```\n"
        "- item\n\n  ```bash\n  echo indented\n  ```\n<!-- not-runnable: -->\n```bash\nexit 1\n```\n```\nplain\n```\n"
        "````{eval-rst}\n```python\nnot a fence of its own\n```\n````\n"
    )
    blocks = fenced_blocks(text)
    assert [(b.line, b.language, b.not_runnable) for b in blocks] == [
        (4, "python", "needs 8 GPUs"),
        (9, "bash", None),
        (13, "bash", ""),
        (16, "", None),
        (19, "{eval-rst}", None),
    ]
    assert blocks[1].code == "echo indented\n"
    assert expected_output("print(1)\n# 1\n# not output\nx = 2\n") == ["1"]


def test_the_commands_of_blocks_not_run_name_what_exists() -> None:
    """The bash blocks that are not run (studies of minutes to hours, set-up): each ``make`` target exists (``make
    -n``), and each ``python <script>`` names a file of the repository that declares every ``--option`` given."""
    problems = []
    for page in pages():
        for block in fenced_blocks(page.read_text()):
            if block.not_runnable is None or block.language != "bash":
                continue
            where = f"{page_id(page)}:{block.line}"
            code = block.code.replace("\\\n", " ")
            for line in (line.split("#", 1)[0].strip() for line in code.splitlines()):
                words = line.split()
                if words[:1] == ["make"]:
                    targets = [w for w in words[1:] if "=" not in w]
                    done = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, check=False)
                    if done.returncode != 0:
                        problems.append(f"{where}: `{line}`: no such make target")
                elif words[:1] == ["python"] and len(words) > 1 and words[1].endswith(".py"):
                    script = REPO / words[1]
                    if not script.is_file():
                        problems.append(f"{where}: `{line}`: no {words[1]}")
                        continue
                    source = script.read_text()
                    for option in (w.split("=", 1)[0] for w in words[2:] if w.startswith("--")):
                        if f'"{option}"' not in source:
                            problems.append(f"{where}: `{line}`: {words[1]} declares no {option}")
    assert problems == []


def test_every_block_says_what_it_is_and_every_marker_why() -> None:
    problems = []
    for page in pages():
        text = page.read_text()
        blocks = fenced_blocks(text)
        for block in blocks:
            where = f"{page_id(page)}:{block.line}"
            if block.language not in RUN + SHOWN and not block.language.startswith("{"):
                problems.append(f"{where}: a ```{block.language} block; use one of {RUN + SHOWN} or a MyST directive")
            if block.not_runnable is not None and not block.not_runnable:
                problems.append(f"{where}: a not-runnable marker must say why")
            if block.not_runnable is not None and block.language not in RUN:
                problems.append(f"{where}: a not-runnable marker on a ```{block.language} block, which never runs")
        marked = sum(1 for line in text.splitlines() if NOT_RUNNABLE.match(line))
        if marked != sum(1 for b in blocks if b.not_runnable is not None):
            problems.append(f"{page_id(page)}: a not-runnable marker that is not on the line right before a block")
    assert problems == []


def test_blocks_are_found() -> None:
    everywhere = {page_id(page): runnable(page) for page in pages()}
    python = [b for blocks in everywhere.values() for b in blocks if b.language == "python"]
    assert len(python) >= 12
    assert any("BatchScalingCallback(" in b.code for b in everywhere["README.md"])
    assert any("Fabric(" in b.code for b in everywhere["docs/fabric.md"])
    assert any(b.language == "pycon" for b in everywhere["docs/noise.md"])
    assert any(b.language == "bash" and "lightning_lrbs preview" in b.code for b in everywhere["docs/preview.md"])
    assert any(b.language == "yaml" for b in everywhere["docs/works-with.md"])


def run_bash(code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """``code`` under ``bash -e`` in ``folder``, which holds a copy of ``examples/`` and an empty ``docs/``."""
    if not (folder / "examples").exists():
        shutil.copytree(REPO / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))
        (folder / "docs").mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("page", [p for p in pages() if runnable(p)], ids=page_id)
def test_every_block_of_the_page_runs_as_written(page: Path, tmp_path: Path) -> None:
    blocks = runnable(page)
    in_python = [b for b in blocks if b.language != "bash"]
    outcomes = []
    if in_python:
        result = subprocess.run(
            [sys.executable, "-c", DRIVER],
            input=json.dumps([(b.language, b.code) for b in in_python]),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg"},
            timeout=300,
            check=False,
        )
        assert "@@RESULTS@@" in result.stdout, result.stderr[-3000:]
        outcomes = json.loads(result.stdout.split("@@RESULTS@@", 1)[1])
    for block, outcome in zip(in_python, outcomes):
        where = f"{page_id(page)} line {block.line}"
        if not outcome["ok"] and outcome["missing"] == "pytorch_lightning":
            continue  # the pytorch_lightning block needs that optional package; everything else must run
        if not outcome["ok"] and not HAS_EMA and "cannot import name 'EMAWeightAveraging'" in outcome["error"]:
            continue  # Lightning < 2.5 (make test-oldest) has no EMAWeightAveraging; the docs show today's Lightning
        assert outcome["ok"], f"{where}:\n{outcome['error']}"
        printed = outcome["stdout"].splitlines()
        for expected in expected_output(block.code) if block.language == "python" else []:
            assert expected in printed, f"{where}: expected {expected!r} in the output {printed}"
    for block in blocks:
        if block.language == "bash":
            done = run_bash(block.code, tmp_path / "shell")
            assert done.returncode == 0, (
                f"{page_id(page)} line {block.line}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )


def test_bash_blocks_run_in_a_scratch_copy_with_this_python(tmp_path: Path) -> None:
    done = run_bash(
        'python -c "import sys; print(sys.executable)"; ls examples/preview_model.py; test -d docs', tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert os.path.normpath(done.stdout.splitlines()[0]) == os.path.normpath(sys.executable)
    assert run_bash("false; echo not reached", tmp_path).returncode != 0


def fragments() -> set[Path]:
    """The Markdown files docs/conf.py leaves out of the site (``exclude_patterns``): parts that a generator assembles
    into a page or whose numbers a page quotes; their links are written for the page they become part of."""
    for node in ast.parse((DOCS / "conf.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "exclude_patterns" for t in node.targets):
            return {DOCS / pattern for pattern in ast.literal_eval(node.value) if pattern.endswith(".md")}
    raise AssertionError("docs/conf.py sets no exclude_patterns")


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_relative_links_point_to_files_that_exist() -> None:
    """Every relative link and image of every page names a file of the repository (``make docs`` checks anchors)."""
    missing = []
    assert fragments()
    for page in set(pages()) - fragments():
        text = re.sub(r"(`+).+?\1", "", re.sub(r"(?s)```.*?```", "", page.read_text()))  # code holds no links
        for target in LINK.findall(text):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+:", path):
                continue
            if not (page.parent / path).exists():
                missing.append(f"{page_id(page)}: {target}")
    assert sorted(missing) == []


class TestReadme:
    """The README is the landing page: of the repository, of PyPI (``readme`` in pyproject.toml) and of the site."""

    def test_it_is_short(self) -> None:
        assert len(README.read_text().splitlines()) <= README_MAX_LINES

    def test_two_commands_set_up_a_fresh_machine(self) -> None:
        setup = next(b for b in fenced_blocks(README.read_text()) if b.language == "bash")
        commands = [line.split("#", 1)[0].strip() for line in setup.code.splitlines()]
        assert commands == ["make demo", "make test"]

    def test_one_picture_and_links_into_the_site(self) -> None:
        text = README.read_text()
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        assert len(images) == 1
        assert images[0].endswith(".png")
        assert (REPO / images[0]).is_file()
        linked = {target.split("#", 1)[0] for target in LINK.findall(text)}
        nav = (DOCS / "index.md").read_text()
        for name in re.findall(r"(?m)^([\w/-]+)$", nav.split("```{toctree}", 1)[1]):
            assert f"docs/{name}.md" in linked, f"the README does not link to docs/{name}.md"

    def test_the_site_includes_it(self) -> None:
        assert "```{include} ../README.md" in (DOCS / "index.md").read_text()

    @pytest.mark.parametrize("page", [README, DOCS / "rules.md"])
    def test_the_rules_table_lists_every_rule(self, page: Path) -> None:
        from lightning_lrbs.rules import RULES

        text = page.read_text()
        table = text[text.index("| `rule` | factor | source |") :].split("\n\n", 1)[0]
        names = re.findall(r"(?m)^\| `\"(\w+)\"`", table)
        assert sorted(names) == sorted(RULES)
        assert "| a callable |" in table


class TestReference:
    """The API reference: the public API in its table, every public module in its list."""

    def listed_modules(self) -> list[str]:
        block = next(b for b in fenced_blocks(REFERENCE.read_text()) if "autosummary" in b.code)
        return re.findall(r"(?m)^   (\w+)$", block.code)

    def test_every_public_module_is_listed(self) -> None:
        public = sorted(m.name for m in pkgutil.iter_modules(lightning_lrbs.__path__) if not m.name.startswith("_"))
        assert sorted(self.listed_modules()) == public

    def test_the_public_api_is_in_the_table(self) -> None:
        text = REFERENCE.read_text()
        for name in lightning_lrbs.__all__:
            if name != "__version__":
                assert re.search(rf"~lightning_lrbs\.\w+\.{name}`", text), f"{name} is not in the reference's table"
        for name in ("AdaScaleLR", "ScaleInvariantSchedule", "preview", "preview_schedule"):
            assert f".{name}`" in text


def test_install_line_is_one_that_works_today() -> None:
    text = README.read_text()
    assert "pip install .  " in text or "pip install . " in text
    # not on PyPI yet: no bare `pip install lightning-lrbs`, and the git form is shown with a marked placeholder
    assert not re.search(r"pip install lightning-lrbs(\s|$)", text)
    assert 'pip install "lightning-lrbs @ git+https://github.com/<owner>/lightning-lrbs"' in text


def test_committed_files_hold_no_machine_paths() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    machine = re.compile("(?<![\\w.])/(" + "work" + "|" + "tmp" + ")/")
    offenders = []
    for name in listed.stdout.splitlines():
        path = REPO / name
        if path.suffix in (".png", ".gz") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if machine.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    assert offenders == []


@pytest.fixture
def mnist_cli(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``examples/mnist_cli.py``, imported, with torchvision's MNIST mirrors pointed at a closed local port."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    return importlib.import_module("mnist_cli")


def test_cli_example_offline_names_its_own_option(mnist_cli: ModuleType, tmp_path: Path) -> None:
    mnist = sys.modules["mnist"]
    args = ["fit", f"--data.data_dir={tmp_path / 'empty'}", "--trainer.logger=false", "--trainer.accelerator=cpu"]
    with pytest.raises(mnist.MNISTNotFoundError) as error:
        mnist_cli.main(args)
    message = str(error.value)
    assert "--data.data_dir" in message
    assert "--data-dir" not in message
    for name in mnist.MNIST_FILES:
        assert name in message


@pytest.fixture
def run_all(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("run_all")


class TestBenchmarkPage:
    def test_notes_are_kept_and_links_follow_the_page(self, run_all: ModuleType, tmp_path: Path) -> None:
        out = tmp_path / "docs" / "benchmarks"
        out.mkdir(parents=True)
        (out / "notes.md").write_text("## Summary\n\nHand-written reading.\n")
        (out / "overhead.md").write_text("## Overhead\n\n![plot](benchmarks/overhead.png)\n")
        (out / "large_batch.md").write_text("## Large batch\n")
        page = tmp_path / "docs" / "benchmarks.md"
        run_all.assemble(out, page, "python benchmarks/run_all.py", 1.0)
        first = page.read_text()
        assert first.startswith("# Benchmarks\n")
        assert first.index("Hand-written reading.") < first.index("## Overhead") < first.index("## Large batch")
        assert "](benchmarks/overhead.png)" in first
        run_all.assemble(out, page, "python benchmarks/run_all.py", 1.0)  # regenerated: nothing lost, nothing doubled
        assert page.read_text() == first
        assert first.count("Hand-written reading.") == 1

        elsewhere = tmp_path / "site" / "page.md"
        run_all.assemble(out, elsewhere, "python benchmarks/run_all.py", None)
        assert "](../docs/benchmarks/overhead.png)" in elsewhere.read_text()
        assert str(tmp_path) not in elsewhere.read_text()

    def test_the_committed_page_is_what_the_generator_writes(self, run_all: ModuleType) -> None:
        doc = REPO / "docs" / "benchmarks.md"
        text = doc.read_text()
        run = re.search(r"; `(python benchmarks/run_all\.py[^`]*)` took (\d+) min", text)  # as the last run wrote it
        command, minutes = (run.group(1), float(run.group(2))) if run else ("", None)
        assert run_all.render(REPO / "docs" / "benchmarks", doc, command, minutes) == text
        assert "## Summary" in (REPO / "docs" / "benchmarks" / "notes.md").read_text()

    def test_commands_are_written_with_repository_relative_paths(self, run_all: ModuleType) -> None:
        bench = sys.modules["lrbs_bench"]
        argv = ["--data-dir", str(REPO.parent / "shared" / "data"), "--out-dir", str(REPO / "docs" / "benchmarks")]
        assert bench.command_line("benchmarks/overhead.py", argv) == (
            "python benchmarks/overhead.py --data-dir ../shared/data --out-dir docs/benchmarks"
        )
        assert bench.repo_path("relative/path") == "relative/path"

    def test_a_folder_beside_the_checkout_may_be_a_symbolic_link(
        self, run_all: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bench = sys.modules["lrbs_bench"]
        (tmp_path / "checkout").mkdir()
        (tmp_path / "elsewhere" / "data").mkdir(parents=True)
        (tmp_path / "shared").symlink_to(tmp_path / "elsewhere")
        monkeypatch.setattr(bench, "ROOT", tmp_path / "checkout")
        assert bench.repo_path(str(tmp_path / "shared" / "data")) == "../shared/data"
        assert bench.repo_path(str(tmp_path / "checkout" / "docs")) == "docs"
