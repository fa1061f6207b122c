"""The project's own classes by name, for class names read from files: a checkpoint never chooses a module to import.

A checkpoint records ``_class_path`` strings (the model's, the datamodule's). Importing them would let a tampered
file import any module (``this.ViTClassifier`` imports ``this``); here they are only looked up among the classes that
``lightning_modules`` and ``datamodules`` export.
"""

from __future__ import annotations

from collections.abc import Iterator


def _exported(base: type) -> Iterator[tuple[str, type]]:
    """(package name, class) for every subclass of ``base`` that ``lightning_modules`` or ``datamodules`` exports."""
    import datamodules
    import lightning_modules

    for package in (lightning_modules, datamodules):
        for name in package.__all__:
            cls = getattr(package, name)
            if isinstance(cls, type) and issubclass(cls, base):
                yield package.__name__, cls


def project_class(class_path: str, base: type) -> type | None:
    """The module14 subclass of ``base`` that ``class_path`` names, or None.

    Accepted spellings: ``ViTClassifier``, ``lightning_modules.ViTClassifier`` and
    ``lightning_modules.classifier.ViTClassifier``; anything else (``this.ViTClassifier``) is None.
    """
    for package, cls in _exported(base):
        if class_path in (cls.__name__, f"{package}.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}"):
            return cls
    return None


def project_class_names(base: type) -> list[str]:
    """Names of the module14 subclasses of ``base``, for messages."""
    return sorted(cls.__name__ for _, cls in _exported(base))
