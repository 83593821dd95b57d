"""The problem registry and problem references: build a problem by name or ``"module:factory"``.

Built-in problems register their factories by name (:func:`register_problem`,
:data:`REGISTRY`); :func:`make_problem` builds one by name or from a reference
``"package.module:factory"``; a reference read back from a checkpoint is untrusted input and
is only resolved under the safety policy of :func:`resolve_problem_factory`
(:func:`rebuild_problem`).
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from ppl_cvae.errors import ConfigError, PplCvaeError, UnknownProblemError, no_exit
from ppl_cvae.problems.adapter import check_problem
from ppl_cvae.problems.base import Problem

__all__ = [
    "REGISTRY",
    "make_problem",
    "rebuild_problem",
    "register_problem",
    "resolve_problem_factory",
]


REGISTRY: dict[str, Callable[..., Problem]] = {}


def register_problem(name: str) -> Callable[[Callable[..., Problem]], Callable[..., Problem]]:
    """Register a problem factory under ``name`` (decorator of a class or a function).

    A registered factory can be built by name with :func:`make_problem`, and a checkpoint
    that references it as ``"package.module:factory"`` rebuilds it wherever it is defined
    (case (b) of the policy in :func:`resolve_problem_factory`), once its module is imported.

    Raises
    ------
    ValueError
        If ``name`` is already registered.
    """

    def decorator(factory: Callable[..., Problem]) -> Callable[..., Problem]:
        if name in REGISTRY:
            raise ValueError(f"problem name {name!r} is already registered")
        REGISTRY[name] = factory
        return factory

    return decorator


def make_problem(name: str, **kwargs: Any) -> Problem:
    """Build a problem from a registry name or a ``package.module:factory`` reference.

    Parameters
    ----------
    name : str
        A registered name (``"two_birds"``, ``"linear_gaussian"``, ``"crosshole"``, ``"mt1d"``,
        ``"gravity"``, or one added with :func:`register_problem`), or a reference
        ``"package.module:factory"``: the module is imported, the (possibly dotted) attribute
        after the colon is looked up (``"pkg.mod:Class"``, ``"pkg.mod:holder.factory"``) and
        called with ``kwargs``. A reference is trusted: use it for names a user typed, never
        for names read from a file (see :func:`rebuild_problem`).
    **kwargs
        Keyword arguments of the factory.

    Returns
    -------
    Problem
        The built problem, checked with :func:`check_problem`.

    Raises
    ------
    UnknownProblemError
        If ``name`` is neither registered nor a reference; the message lists the registered
        names.
    ConfigError
        If the module of a reference cannot be imported (the message names it and the import
        error), the attribute is missing or not callable, the factory rejects ``kwargs``
        (a ``TypeError`` from the call), raises another exception (its type and message are
        kept), or returns something that is not a problem.

    Examples
    --------
    >>> make_problem("linear_gaussian", x_dim=3).x_shape
    (3,)
    >>> make_problem("ppl_cvae.problems.linear_gaussian:LinearGaussian", y_dim=4).y_shape
    (4,)
    """
    if not isinstance(name, str):
        raise ConfigError(f"a problem name must be a string, got {type(name).__name__}")
    if ":" in name:
        factory = resolve_problem_factory(name)
        source = f"problem factory {name!r}"
    else:
        factory = _registered(name)
        source = f"problem {name!r}"
    try:
        with no_exit(source):
            problem = factory(**kwargs)
    except (PplCvaeError, MemoryError):
        raise
    except TypeError as err:
        raise ConfigError(
            f"{source} does not accept the arguments {sorted(kwargs)}: {err}"
        ) from err
    except Exception as err:  # noqa: BLE001 - a user's factory may raise anything
        raise ConfigError(f"{source} failed: {type(err).__name__}: {err}") from err
    return check_problem(problem, source)


def _registered(name: str) -> Callable[..., Any]:
    """Return the registered factory ``name``, or raise UnknownProblemError."""
    # importing the built-in problems registers them
    import ppl_cvae.problems  # noqa: F401

    if name not in REGISTRY:
        raise UnknownProblemError(
            f"unknown problem {name!r}; expected one of {sorted(REGISTRY)} or a reference "
            "'package.module:factory'"
        )
    return REGISTRY[name]


# ----------------------------------------------------------------------- references
def _parse_reference(reference: str) -> tuple[str, list[str]]:
    """Split ``"package.module:attr.attr"`` into the module name and the attribute path."""
    module_name, sep, attr = reference.partition(":")
    parts = [*module_name.split("."), *attr.split(".")]
    if not sep or not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        raise ConfigError(
            f"problem reference {reference!r} is not of the form 'package.module:factory'"
        )
    return module_name, attr.split(".")


def _excluded_roots() -> list[Path]:
    """Folders whose code is not "the user's own": the standard library and installed packages."""
    paths = sysconfig.get_paths()
    roots = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    roots += [*site.getsitepackages(), site.getusersitepackages()]
    for prefix in (sys.base_prefix, sys.base_exec_prefix):
        if Path(prefix).resolve() != Path(Path(prefix).resolve().anchor):  # never all of "/"
            roots.append(prefix)
    return [Path(os.path.realpath(r)) for r in roots]


def _is_user_file(filename: str) -> bool:
    """Whether ``filename`` is a source file outside the standard library and site-packages."""
    if not os.path.isabs(filename) or not os.path.isfile(filename):
        return False
    path = Path(os.path.realpath(filename))
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    return not any(path.is_relative_to(root) for root in _excluded_roots())


_OWN_PACKAGES = ("ppl_cvae", "inference")


def resolve_problem_factory(reference: str, *, untrusted: bool = False) -> Callable[..., Any]:
    """Import the module of ``"package.module:factory"`` and return the factory it names.

    Parameters
    ----------
    reference : str
        ``"package.module:attr"``, where ``attr`` may be dotted (``"Outer.factory"``).
    untrusted : bool, default False
        The reference was read from a file (a checkpoint), so it may be forged: apply the
        safety policy below and refuse anything else, before calling it and, for the
        standard library, before importing it.

    Returns
    -------
    callable
        The factory; nothing has called it.

    Raises
    ------
    ConfigError
        If the reference is malformed, the module cannot be imported (the message names it
        and the import error), the attribute is missing or not callable, or, with
        ``untrusted``, the policy refuses it (the message says why).

    Notes
    -----
    Safety policy for untrusted references. A forged checkpoint could otherwise name, say,
    ``shutil:rmtree`` or ``subprocess:Popen`` with arguments of its choosing, so a reference
    is only resolved when

    - no component of it starts with ``__`` (no ``__main__``, ``__builtins__``, ...);
    - its top-level package is not part of the standard library or built into the
      interpreter (checked by name, before importing: ``os``, ``shutil``, ``subprocess``,
      ``builtins``, ... are never imported or looked into);
    - every dotted step of the attribute path goes through a module or a class, read
      statically (no properties or ``__getattr__`` hooks run); and the object it names is

      (a) a class (not a built-in one) that defines the problem methods ``forward``,
          ``sample_prior`` and ``simulate``; or
      (b) a function or class registered with :func:`register_problem`; or
      (c) a plain Python function (not a builtin, method, ``functools.partial`` or other
          callable object) whose ``__module__`` is the named module and whose source file
          lies outside the standard library, ``site-packages``/``dist-packages`` and the
          interpreter's installation prefix (``sys.base_prefix``), i.e. the user's own
          code, and not in this package (``ppl_cvae``, ``inference``), whose functions are
          not problem factories unless registered.

    Importing the module of an allowed reference runs its top-level code, as any import
    does. The policy does not make a forged checkpoint harmless: it limits the callables it
    can reach to problem classes, registered factories and functions in the user's own
    modules, each called with JSON-like keyword arguments.
    """
    module_name, attrs = _parse_reference(reference)
    top = module_name.split(".")[0]
    if untrusted:
        parts = [*module_name.split("."), *attrs]
        if any(p.startswith("__") for p in parts):
            raise ConfigError(
                f"problem reference {reference!r} names a dunder attribute or module; refused"
            )
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            raise ConfigError(
                f"problem reference {reference!r} names the standard-library module "
                f"{top!r}, which holds no problem factories; refused"
            )
    try:
        with no_exit(f"importing module {module_name!r} of problem reference {reference!r}"):
            module = sys.modules.get(module_name) or importlib.import_module(module_name)
    except PplCvaeError:
        raise
    except Exception as err:  # an import runs arbitrary module code: report any failure
        hint = ""
        if isinstance(err, ModuleNotFoundError) and err.name == top:
            here = Path.cwd() / f"{top}.py"
            hint = (
                f" (the folder holding {top}.py must be on the import path: run with "
                f"PYTHONPATH=<that folder>"
                + (f"; {here} exists, so PYTHONPATH=. here" if here.is_file() else "")
                + ")"
            )
        raise ConfigError(
            f"cannot import module {module_name!r} of problem reference {reference!r}: "
            f"{type(err).__name__}: {err}{hint}"
        ) from err
    obj: Any = module
    for i, attr in enumerate(attrs):
        where = f"{module_name}:{'.'.join(attrs[:i])}" if i else f"module {module_name!r}"
        try:
            if untrusted:
                if not (inspect.ismodule(obj) or inspect.isclass(obj)):
                    raise ConfigError(
                        f"problem reference {reference!r} looks up {attr!r} on a "
                        f"{type(obj).__name__}, not a module or class; refused"
                    )
                obj = inspect.getattr_static(obj, attr)
            else:
                obj = getattr(obj, attr)
        except AttributeError as err:
            raise ConfigError(
                f"problem reference {reference!r}: {where} has no attribute {attr!r}"
            ) from err
    if untrusted:
        if isinstance(obj, staticmethod):
            obj = obj.__func__
        refusal = _policy_refusal(obj, module_name)
        if refusal is not None:
            raise ConfigError(
                f"problem reference {reference!r} names {refusal}; refused: a checkpoint "
                "only rebuilds problem classes, registered factories and functions of the "
                "user's own modules"
            )
    if not callable(obj):
        raise ConfigError(
            f"problem reference {reference!r} names a {type(obj).__name__}, not a callable"
        )
    return cast(Callable[..., Any], obj)


def _policy_refusal(obj: Any, module_name: str) -> str | None:
    """Return why the policy refuses ``obj`` (a short phrase), or None if it allows it."""
    if inspect.isbuiltin(obj) or getattr(obj, "__module__", None) == "builtins":
        return f"the builtin {getattr(obj, '__name__', type(obj).__name__)!r}"
    if any(obj is factory for factory in REGISTRY.values()):
        return None  # (b) registered
    if inspect.isclass(obj):
        methods = ("forward", "sample_prior", "simulate")
        lacking = [m for m in methods if not callable(inspect.getattr_static(obj, m, None))]
        if not lacking:
            return None  # (a) a problem class
        return f"the class {obj.__qualname__!r}, which lacks the problem methods {lacking}"
    if inspect.isfunction(obj):
        own = str(obj.__module__).split(".")[0] in _OWN_PACKAGES
        if obj.__module__ != module_name:
            return (
                f"the function {obj.__qualname__!r} of module {obj.__module__!r}, imported "
                f"into {module_name!r}"
            )
        if own:
            return f"the function {obj.__qualname__!r} of ppl_cvae itself, not registered"
        if not _is_user_file(inspect.getfile(obj)):
            return (
                f"the function {obj.__qualname__!r} from {inspect.getfile(obj)!r}, which is "
                "in the standard library or an installed package"
            )
        return None  # (c) the user's own function
    return f"a {type(obj).__name__}, which is neither a problem class nor a plain function"


def rebuild_problem(name: str, kwargs: Mapping[str, Any]) -> Problem:
    """Rebuild a problem from a record read from an untrusted file (a checkpoint).

    Parameters
    ----------
    name : str
        Registry name or ``"package.module:factory"`` reference.
    kwargs : Mapping[str, Any]
        Keyword arguments of the factory (JSON-like values).

    Returns
    -------
    Problem
        The rebuilt problem, checked with :func:`check_problem`.

    Raises
    ------
    UnknownProblemError
        If ``name`` is not a reference and not registered.
    ConfigError
        If a reference is refused by the policy of :func:`resolve_problem_factory`, its
        module cannot be imported, the factory raises anything (its exception is named in
        the message) or returns something that is not a problem.

    Notes
    -----
    Registry names are always rebuilt; references only under the safety policy described
    in :func:`resolve_problem_factory` (``untrusted=True``).
    """
    if ":" not in name:
        return make_problem(name, **kwargs)
    factory = resolve_problem_factory(name, untrusted=True)
    source = f"problem factory {name!r}"
    try:
        with no_exit(source):
            problem = factory(**kwargs)
    except PplCvaeError:
        raise
    except Exception as err:  # user code may raise anything; loading must not crash on it
        raise ConfigError(
            f"{source} failed on the arguments {sorted(kwargs)}: {type(err).__name__}: {err}"
        ) from err
    return check_problem(problem, source)
