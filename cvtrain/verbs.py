"""Packages that share their name with a verb of the API (``cvtrain.sweep``, ``cvtrain.audit``).

``import cvtrain`` loads its verbs on first use (``cvtrain/__init__.py``). Importing a submodule of such a
package makes the package the attribute ``cvtrain.<name>``, in place of the function; ``callable_package`` lets
the package answer a call exactly as the function does, whichever was imported first.
"""
from __future__ import annotations

import pkgutil
import sys
import types


class _VerbPackage(types.ModuleType):
    """A package that runs its verb when called (``cvtrain.sweep(...)``, ``cvtrain.audit(...)``)."""

    _verb = ""  # "module:function"

    def __call__(self, *args, **kwargs):
        return pkgutil.resolve_name(self._verb)(*args, **kwargs)


def callable_package(package: str, verb: str) -> None:
    """Make the package ``package`` (its ``__name__``) callable as ``verb`` (``"module:function"``)."""
    module = sys.modules[package]
    module.__class__ = type(f"{package}.verb", (_VerbPackage,), {"_verb": verb, "__module__": __name__})
