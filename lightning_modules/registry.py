"""The project's own classes by name, for class names read from files (a checkpoint never chooses a module to import),
and the model families: every ``FamilyModule`` defined in ``lightning_modules``, found by its file alone.

A checkpoint records ``_class_path`` strings (the model's, the datamodule's). Importing them would let a tampered
file import any module (``this.ViTClassifier`` imports ``this``); here they are only looked up among the classes that
``lightning_modules`` (each of its modules, imported by the package) and ``datamodules`` define.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

PACKAGES = ("lightning_modules", "datamodules")


def _defined(base: type) -> Iterator[tuple[str, type]]:
    """(package name, class) for every subclass of ``base`` defined in a module of ``PACKAGES``."""
    import datamodules  # noqa: F401  (imports every module of the package)
    import lightning_modules  # noqa: F401

    for name, module in list(sys.modules.items()):
        package = name.split(".")[0]
        if package in PACKAGES:
            for cls in vars(module).values():
                if isinstance(cls, type) and issubclass(cls, base) and cls.__module__ == name:
                    yield package, cls


def project_class(class_path: str, base: type) -> type | None:
    """The module14 subclass of ``base`` that ``class_path`` names, or None.

    Accepted spellings: ``ViTClassifier``, ``lightning_modules.ViTClassifier`` and
    ``lightning_modules.classifier.ViTClassifier``; anything else (``this.ViTClassifier``) is None.
    """
    for package, cls in _defined(base):
        if class_path in (cls.__name__, f"{package}.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}"):
            return cls
    return None


def project_class_names(base: type) -> list[str]:
    """Names of the module14 subclasses of ``base``, for messages."""
    return sorted({cls.__name__ for _, cls in _defined(base)})


def families() -> list[type]:
    """Every concrete model family (a ``FamilyModule`` subclass of ``lightning_modules``), by name."""
    from lightning_modules.base import FamilyModule, GenerativeModule

    found = {cls for package, cls in _defined(FamilyModule) if package == "lightning_modules"}
    return sorted(found - {FamilyModule, GenerativeModule}, key=lambda cls: cls.__name__)
