"""Sphinx configuration of the lightning-lrbs documentation (``make docs``).

Sphinx, because the docstrings are Google style with reStructuredText inside (``.. math::``, ``:class:``, ``:func:``,
``Example::`` blocks): autodoc + napoleon render them as written, math included, and the pages are Markdown through
MyST. The build is offline (no intersphinx, no external link checks) and strict: ``make docs`` runs ``sphinx-build
-W --keep-going -n``, so a broken page link, a missing anchor or file, an unresolved ``lightning_lrbs`` cross-reference
or any other warning fails it.
"""

from __future__ import annotations

import importlib
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

import lightning_lrbs

project = "lightning-lrbs"
author = "lightning-lrbs developers"
copyright = "lightning-lrbs developers"
release = lightning_lrbs.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# Pages are Markdown (MyST); .rst only for the stubs autosummary writes into reference/generated/. The navigation is
# the toctrees of index.md: a page in none of them fails the build, unless it is one of the ORPHANS below.
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# The studies' generated fragments: those a generator assembles into a page (benchmarks.md, frontier.md) or whose
# numbers a page quotes are not pages of their own; the tables a study page links to are pages outside the
# navigation (orphans). Generated fragments start at "##", hence no warning for that.
exclude_patterns = [
    "_build",
    "frontier/notes.md",
    "ramp/notes.md",
    "ramp/constants.md",
    "benchmarks/notes.md",
    "benchmarks/overhead.md",
    "benchmarks/time_to_accuracy.md",
    "benchmarks/large_batch.md",
    "noise_scale_curve.md",
    "noise_scale_overhead.md",
    "noise_scale_instructions.md",
    "noise_scale_heap_default/noise_scale_overhead.md",
    "noise_scale_hook_probes.md",
]
ORPHANS = (
    "scaling/table",
    "sde/table",
    "sde/noise_scale",
    "adascale/table",
    "adascale/seed1/table",
    "benchmarks/overhead_run2",
)
suppress_warnings = ["myst.header"]
templates_path = ["_templates"]

# MyST: $…$ and $$…$$ math as GitHub renders it, and GitHub-style anchors on every heading so that
# [text](page.md#a-heading) links are checked (a missing anchor is a warning, hence an error).
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 6

# The API reference: autosummary writes one page per module listed in reference/index.md.
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# Every cross-reference must resolve (-n). A reference to a ``lightning_lrbs`` name links to where that name is
# documented (a re-export such as ``lightning_lrbs.BatchScalingCallback`` to its module); one to a name that exists but
# is not in the reference (private helpers, type aliases) is shown as code; one to a name that does not exist fails
# the build. Other packages cannot be linked offline (no intersphinx: the build fetches nothing), so they are not
# checked.
nitpicky = True
_EXTERNAL = (
    "torch|lightning|pytorch_lightning|lightning_fabric|lightning_utilities|numpy|np|matplotlib|timm|jsonargparse"
    "|typing|typing_extensions|collections|pathlib|types|builtins|abc|dataclasses|enum|os|contextlib|logging"
)
_BUILTINS = "None|int|float|str|bool|bytes|object|dict|list|tuple|set|frozenset|type|Ellipsis|NotImplemented"
nitpick_ignore_regex = [(r"py:.*", rf"({_EXTERNAL})(\..*)?"), (r"py:.*", _BUILTINS)]

html_theme = "furo"
html_title = f"lightning-lrbs {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
pygments_style = "friendly"


def _defined_at(name: str) -> str | None:
    """``module.qualname`` of the ``lightning_lrbs`` object ``name`` names, or ``None`` if it names none."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                return None
            obj = getattr(obj, attribute)
        owner, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(owner, str) and isinstance(qualname, str) and "<" not in qualname:
            return f"{owner}.{qualname}"
        return name
    return None


def _resolve_lrbs_reference(app: Sphinx, env: BuildEnvironment, node: Any, contnode: nodes.Element) -> Any:
    """Resolve a Python reference that names a ``lightning_lrbs`` object, as seen from where it is written (class,
    module, or absolute): link to where the object is documented, or show it as code when it exists but is not in the
    reference. Anything else is left unresolved (a warning, unless it is another package's name)."""
    if node.get("refdomain") != "py":
        return None
    target, module, cls = node["reftarget"].lstrip("~."), node.get("py:module"), node.get("py:class")
    scopes = [f"{module}.{cls}." if module and cls else "", f"{module}." if module else "", ""]
    domain = env.get_domain("py")
    for scope in scopes:
        name = scope + target
        if not name.startswith("lightning_lrbs"):
            continue
        defined = _defined_at(name)
        if defined is None:
            continue
        for candidate in dict.fromkeys((defined, name)):
            found = domain.resolve_any_xref(env, node["refdoc"], app.builder, candidate, node, contnode)
            if found:
                return found[0][1]
        return contnode
    return None


def _no_inline_attribute_types(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Napoleon reads the first line of a property's or a constant's docstring as ``type: description`` when it holds
    a colon ("Whether a step started …: the optimizer holds …" would become a type). The types come from the
    annotations here, so an empty comment put first, which napoleon takes for that line, turns that reading off."""
    if what in ("attribute", "data", "property") and lines and lines[0].strip():
        lines[:0] = ["..", ""]


def _mark_orphans(app: Sphinx, docname: str, source: list[str]) -> None:
    """Give the linked study tables ``orphan: true`` without writing it into the files their scripts generate."""
    if docname in ORPHANS:
        source[0] = "---\norphan: true\n---\n" + source[0]


def setup(app: Sphinx) -> None:
    app.connect("missing-reference", _resolve_lrbs_reference)
    app.connect("source-read", _mark_orphans)
    app.connect("autodoc-process-docstring", _no_inline_attribute_types, priority=400)  # napoleon's runs at 500
