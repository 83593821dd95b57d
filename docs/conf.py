"""Sphinx configuration of the ppl_cvae documentation (``make docs``).

The build is offline: no intersphinx inventories, no remote images, nothing downloaded.
``make docs`` runs ``sphinx-build -W --keep-going``, so every warning fails the build:
malformed docstring sections (numpydoc), bad reStructuredText, a documented object without a
docstring (numpydoc check GL08), and explicit cross-references (``:func:``, ``:class:``, ...)
to this project's objects that do not resolve (``nitpicky``). References into third-party
packages (torch, numpy, pyro, ArviZ, ...) cannot resolve without intersphinx and are ignored
by ``nitpick_ignore_regex`` below.

The API pages (``docs/api/``) are written with three local directives defined here, so that
they follow the code without edits: ``api-package`` (a package's docstring, a summary table
of its ``__all__`` and every public module found by walking it), ``api-module``
(``automodule`` plus entries for undocumented public constants) and ``public-api`` (the
summary table alone). A reference is accepted when Python would resolve it from the
docstring's module (:func:`resolve_public_alias`), so ``ppl_cvae.train.fit_problem`` links to
``ppl_cvae.train.fit.fit_problem``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList
from sphinx.ext import autosummary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ArviZ 0.23 announces its 1.0 refactor at import time (as in pyproject's pytest filters)
warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor")

from ppl_cvae import __version__  # noqa: E402

project = "ppl_cvae"
author = "ppl_cvae developers"
copyright = "ppl_cvae developers (MIT licence)"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",  # docs/glossary.md stays Markdown (STYLE.md section 2 keeps it there)
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"
templates_path: list[str] = []
html_theme = "alabaster"  # ships with Sphinx: no theme dependency
html_static_path: list[str] = []
html_theme_options = {"description": "Amortized Bayesian inversion with Pyro CVAEs"}
# MathJax is loaded by the reader's browser from its CDN; the build itself fetches nothing.

# ---------------------------------------------------------------- autodoc / numpydoc
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"  # types are also written in the numpydoc Parameters
autodoc_preserve_defaults = True  # show ``CHUNK_BYTES``, not 268435456
autosummary_generate = False  # summary tables only; each object is documented once by autodoc
numpydoc_show_class_members = False  # methods are documented by autodoc, not as tables
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False  # free-text types ("Tensor, shape (n, d)") are not targets
numpydoc_validation_checks = {"GL08"}  # every documented object has a docstring

# -------------------------------------------------------------------- cross-references
# Explicit references to this project's objects must resolve; references into packages
# without an offline inventory are accepted as they are.
nitpicky = True
_EXTERNAL = (
    "torch", "pyro", "numpy", "np", "arviz", "az", "xarray", "xr", "pandas", "pd",
    "matplotlib", "seaborn", "scipy", "sklearn", "h5netcdf", "h5py", "tqdm",
    "collections", "typing", "pathlib", "os", "io", "argparse", "dataclasses", "enum",
    "numbers", "contextlib", "types", "logging", "abc",
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_EXTERNAL)})(\..*)?"),
    # bare names of third-party types as they appear in annotations
    (r"py:.*", r"(Tensor|Generator|Module|Figure|Axes|InferenceData|Dataset|DataArray|"
               r"DataFrame|ndarray|Distribution|Path|PathLike|Literal|Any|NamedTuple|"
               r"Protocol|Callable|Iterator|Iterable|Mapping|Sequence|Self|TracebackType)"),
]


# ------------------------------------------------------------ public API summary tables
class PublicApiDirective(Directive):
    """``.. public-api:: package``: an autosummary table of ``package.__all__``.

    Each name links to where it is documented (its defining module), so a public name whose
    module is missing from the API pages is an unresolved reference and fails the build.
    """

    required_arguments = 1
    has_content = False
    option_spec = {"exclude": directives.unchanged}

    def run(self) -> list[Any]:
        """Return the parsed autosummary table."""
        package = importlib.import_module(self.arguments[0])
        exclude = set(self.options.get("exclude", "").split())
        lines = [".. autosummary::", ""]
        for name in sorted(package.__all__, key=str.lower):
            if name in exclude:
                continue
            obj = getattr(package, name)
            module = getattr(obj, "__module__", None)
            if not isinstance(module, str) or getattr(obj, "__name__", None) != name:
                module = _data_home(package, name)  # data, e.g. REGISTRY
            lines.append(f"   ~{module}.{name}")
        # autosummary resolves names relative to the page's current module (the package, set
        # by its automodule), which is also the context of the references in the summaries
        current = self.state.document.settings.env.ref_context.get("py:module")
        if current:
            lines[2:] = [line.replace(f"~{current}.", "~", 1) for line in lines[2:]]
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return list(container.children)


class ApiModuleDirective(Directive):
    """``.. api-module:: module``: ``automodule`` plus the module's undocumented data.

    autodoc documents a module-level constant only when it has a doc comment (a string
    literal after it, or ``#:``). Every other name of the module's ``__all__`` that is data
    (``REGISTRY``, ``ACTIVATIONS``, type aliases) gets a plain ``py:data`` entry (its value
    when short), so that each public name has an entry to link to; one that gains a doc
    comment moves to the automodule listing by itself. Options are passed to ``automodule``.
    """

    required_arguments = 1
    has_content = False
    option_spec = {
        "no-members": directives.flag,
        "show-inheritance": directives.flag,
    }

    def run(self) -> list[Any]:
        """Return the parsed automodule and autodata directives."""
        from sphinx.pycode import ModuleAnalyzer

        name = self.arguments[0]
        lines = [f".. automodule:: {name}"]
        lines += [f"   :{option}:" for option in self.options]
        if "no-members" not in self.options:
            module = importlib.import_module(name)
            analyzer = ModuleAnalyzer.for_module(name)
            analyzer.analyze()
            documented = {attr for (namespace, attr) in analyzer.attr_docs if not namespace}
            for member in getattr(module, "__all__", ()):
                value = getattr(module, member)
                if inspect.isclass(value) or inspect.isroutine(value) or member in documented:
                    continue
                # a plain entry, not autodata: no docstring to inherit from the value's type
                lines += ["", f".. py:data:: {member}"]
                text = repr(value)
                if _is_type_alias(value):
                    lines += ["", f"   Type alias: ``{text.replace('typing.', '')}``."]
                elif len(text) <= 80 and "\n" not in text:
                    lines.append(f"   :value: {text}")
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return list(container.children)


def _is_type_alias(value: Any) -> bool:
    """Whether ``value`` is a typing construct (``tuple[...]``, ``Callable[...]``, ``Literal``)."""
    return isinstance(value, types.GenericAlias) or type(value).__module__ == "typing"


class ApiPackageDirective(Directive):
    """``.. api-package:: package``: a package's page, its modules found by walking it.

    The package docstring, the summary table of its ``__all__`` (:class:`PublicApiDirective`)
    and one section per public module below it (no ``_`` in the dotted name), each documented
    by :class:`ApiModuleDirective`; subpackages show their docstring only, since what they
    export is documented in their modules. A module added to the package appears without an
    edit here. ``:exclude:`` names modules (and their subtrees) documented on other pages.
    """

    required_arguments = 1
    has_content = False
    option_spec = {"exclude": directives.unchanged}

    def run(self) -> list[Any]:
        """Return the parsed sections."""
        import pkgutil

        from sphinx.util.nodes import nested_parse_with_titles

        name = self.arguments[0]
        package = importlib.import_module(name)
        exclude = tuple(self.options.get("exclude", "").split())
        lines = [f".. automodule:: {name}", "   :no-members:", "", f".. public-api:: {name}", ""]
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            module = info.name
            if any(p.startswith("_") for p in module.split(".")) or module.startswith(exclude):
                continue
            title = f"``{module}``"
            lines += [title, "-" * len(title), "", f".. api-module:: {module}"]
            lines += ["   :no-members:"] if info.ispkg else ["   :show-inheritance:"]
            lines.append("")
        container = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines), container, self.content_offset)
        return list(container.children)


def _data_home(package: Any, name: str) -> str:
    """Return the submodule of ``package`` whose ``__all__`` defines the data ``name``."""
    import pkgutil

    value = getattr(package, name)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        if name in getattr(module, "__all__", ()) and getattr(module, name, None) is value:
            if not any(part.startswith("_") for part in info.name.split(".")):
                return info.name
    return package.__name__


# ------------------------------------------------- docstring and reference adjustments
_SECTIONS = {
    "Parameters", "Other Parameters", "Returns", "Yields", "Receives", "Raises", "Warns",
    "Attributes",
}
_STAR = re.compile(r"(?<![\\*])\*(?=[A-Za-z_(])")


def _escape_star(text: str) -> str:
    """Escape ``*`` that starts a name (``*y_shape``) outside inline literals."""
    parts = text.split("``")
    parts[::2] = [_STAR.sub(r"\\*", part) for part in parts[::2]]
    return "``".join(parts)


def escape_type_stars(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Escape unpacking stars in the type of numpydoc entries before numpydoc renders them.

    Shapes are written as types, e.g. ``y : Tensor, shape (M, *y_shape)``; numpydoc copies a
    type into reStructuredText as it is, where ``*y_shape`` would open an emphasis. Only the
    header lines of the entries of the sections above are changed, never descriptions.
    """
    section, indent = None, None
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        stripped = line.strip()
        if following.strip() and set(following.strip()) == {"-"} and stripped:
            section, indent = (stripped if stripped in _SECTIONS else None), None
            continue
        if section is None or not stripped or set(stripped) == {"-"}:
            continue
        current = len(line) - len(line.lstrip())
        if indent is None:
            indent = current
        if current != indent:
            continue  # a description line
        head, sep, type_ = line.partition(" : ")
        lines[i] = head + sep + _escape_star(type_) if sep else _escape_star(line)


def _resolve_object(target: str, module: str | None, cls: str | None) -> Any:
    """Import the object a reference names from the docstring's module or its packages.

    Returns ``_MISSING`` when no candidate imports.
    """
    return _resolve_with_path(target, module, cls)[0]


def _resolve_with_path(target: str, module: str | None, cls: str | None) -> tuple[Any, str]:
    """Return the object a reference names and the dotted path that found it."""
    candidates = []
    if module:
        if cls:
            candidates.append(f"{module}.{cls}.{target}")
        parts = module.split(".")
        # the module itself, then its enclosing packages (a sibling module's public name)
        candidates += [".".join(parts[:cut] + [target]) for cut in range(len(parts), 0, -1)]
    candidates.append(target)
    for candidate in candidates:
        parts = candidate.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return obj, candidate
    return _MISSING, ""


_MISSING = object()
_OWN = ("ppl_cvae", "inference")


def _documented_name(env: Any, obj: Any) -> str | None:
    """Return the name under which ``obj`` is documented in the Python domain, if any."""
    domain = env.get_domain("py")
    qualname = getattr(obj, "__qualname__", None)
    module = getattr(obj, "__module__", None)
    if isinstance(qualname, str) and isinstance(module, str):
        name = f"{module}.{qualname}"
        if name in domain.objects:
            return name
    for name in domain.objects:  # data and aliases: match by identity
        if name.rsplit(".", 1)[-1] == getattr(obj, "__name__", name.rsplit(".", 1)[-1]):
            if _resolve_object(name, None, None) is obj:
                return name
    return None


def resolve_public_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve references that Python would resolve: re-exports, imports, private helpers.

    Docstrings may name an object by any path that imports it (``ppl_cvae.train.fit_problem``
    for ``ppl_cvae.train.fit.fit_problem``; ``GaussianRandomField`` where a module imported
    it). Such a reference links to the page that documents the object; one to an object that
    exists but has no page (a private helper, an inherited method, an instance attribute of
    a documented class) is rendered as code. A name that does not import stays an error.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    module, cls = node.get("py:module"), node.get("py:class")
    obj, path = _resolve_with_path(target, module, cls)
    if obj is _MISSING:
        if node["reftype"] == "attr" and "." in target:  # instance attribute of a class
            owner = _resolve_object(target.rsplit(".", 1)[0], module, cls)
            return None if owner is _MISSING else contnode
        if node["reftype"] == "attr" and cls:
            owner = _resolve_object(cls, module, None)
            return None if owner is _MISSING else contnode
        return None
    if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
        home = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
    else:  # data and type aliases belong to the module that defines the name
        home = path
    if not str(home).startswith(_OWN):
        return None  # third-party: left to nitpick_ignore_regex
    name = _documented_name(env, obj) if not isinstance(obj, (int, float, str)) else None
    if name is None:
        return contnode
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, "obj", name, node, contnode
    )


def factory_defaults(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, ret: Any
) -> tuple[str | None, Any] | None:
    """Write a dataclass field's ``default_factory`` as a call (``list()``).

    ``inspect`` shows it as ``<factory>``, which is not Python, and Sphinx's signature parser
    then splits annotations such as ``list[dict[str, float]]`` at their commas.
    """
    if signature is None or "<factory>" not in signature or not dataclasses.is_dataclass(obj):
        return None
    for field in dataclasses.fields(obj):
        if field.default_factory is not dataclasses.MISSING and field.init:
            factory = getattr(field.default_factory, "__name__", "factory")
            signature = signature.replace("<factory>", f"{factory}()", 1)
    return signature.replace("<factory>", "..."), ret


def drop_inherited_data_docs(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Drop the docstring a constant inherits from its type (``dict``, ``tuple``, ...).

    autodoc falls back to ``type(value).__doc__`` for a constant without a doc comment, which
    would describe ``dict`` where ``REGISTRY`` is listed.
    """
    if what in ("data", "attribute") and not inspect.isclass(obj) and lines:
        inherited = inspect.getdoc(type(obj)) or ""
        if inherited and "\n".join(lines).strip() == inherited.strip():
            lines[:] = []


def _extract_summary(doc: list[str], settings: Any) -> str:
    """Autosummary's first sentence, extended past periods inside an inline literal.

    Sphinx 9.0's ``extract_summary`` cuts ``Build ``in -> hidden... -> out``.`` at the
    ``...`` (its check for broken markup parses the whole stanza, not the cut sentence).
    """
    summary = _ORIGINAL_EXTRACT_SUMMARY(doc, settings)
    if summary.count("``") % 2 == 0:
        return summary
    stanza: list[str] = []
    for line in doc:
        if line.strip():
            stanza.append(line.strip())
        elif stanza:
            break
    text = " ".join(stanza)
    for end in re.finditer(r"\.(\s+|$)", text):
        candidate = text[: end.start() + 1]
        if candidate.count("``") % 2 == 0:
            return candidate
    return text


_ORIGINAL_EXTRACT_SUMMARY = autosummary.extract_summary
autosummary.extract_summary = _extract_summary


def skip_member(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> Any:
    """Document every name of a module's ``__all__``, with a docstring or not (e.g. REGISTRY)."""
    if what == "module" and skip and not name.startswith("_"):
        return False
    return None


def setup(app: Any) -> dict[str, Any]:
    """Register the directives and the hooks above."""
    app.add_directive("public-api", PublicApiDirective)
    app.add_directive("api-module", ApiModuleDirective)
    app.add_directive("api-package", ApiPackageDirective)
    app.connect("autodoc-process-docstring", escape_type_stars, priority=400)
    app.connect("autodoc-process-docstring", drop_inherited_data_docs, priority=300)
    app.connect("autodoc-skip-member", skip_member)
    app.connect("autodoc-process-signature", factory_defaults)
    app.connect("missing-reference", resolve_public_alias)
    return {"parallel_read_safe": True}
