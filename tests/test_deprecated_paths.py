"""Old import paths of moved modules: each still imports, warns once naming the new path, and is the new module."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

#: old dotted path -> new home (issue 17: the run layer moved into jmeta.run).
MOVED = {
    "jmeta.config": "jmeta.run.config",
    "jmeta.experiment": "jmeta.run.experiment",
    "jmeta.export": "jmeta.run.export",
    "jmeta.plots": "jmeta.run.plots",
    "jmeta.sweep": "jmeta.run.search",
    "jmeta.cli": "jmeta.run.cli",
    "jmeta.train.runner": "jmeta.run.runner",
    "jmeta.train.checkpoint": "jmeta.run.checkpoint",
    "jmeta.train.lock": "jmeta.run.lock",
    "jmeta.train.interrupt": "jmeta.run.interrupt",
    "jmeta.train.logging": "jmeta.run.logs",
    "jmeta.train.tensorboard": "jmeta.run.tensorboard",
    "jmeta.train.wandb_logger": "jmeta.run.wandb_logger",
}


def _fresh_import(old: str):
    """``import old`` twice from a fresh start, in code whose file name is ``<importer>``; the warnings."""
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scope: dict = {}
        exec(compile(f"import {old}\nimport {old}\nfirst = sys.modules[{old!r}]", "<importer>", "exec"),
             {"sys": sys}, scope)
    return scope["first"], [w for w in caught if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_warns_once_and_is_the_new_module(old):
    new = importlib.import_module(MOVED[old])
    module, warned = _fresh_import(old)
    assert len(warned) == 1, [str(w.message) for w in warned]
    message = str(warned[0].message)
    assert MOVED[old] in message and old in message
    assert warned[0].filename == "<importer>"  # attributed to the import line, not to the shim
    assert module is new  # every name, private ones included, is the same object
    parent, _, child = old.rpartition(".")
    assert getattr(sys.modules[parent], child) is new
    public = [n for n in vars(new) if not n.startswith("_")]
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already imported: no second warning
        exec(f"from {old} import {', '.join(public)}", scope)
    assert all(scope[n] is getattr(new, n) for n in public)


def test_jmeta_config_attribute_is_the_deprecated_alias():
    import jmeta
    import jmeta.run.config

    sys.modules.pop("jmeta.config", None)
    vars(jmeta).pop("config", None)
    with pytest.warns(DeprecationWarning, match=r"jmeta\.run\.config"):
        assert jmeta.config is jmeta.run.config
    assert "config" not in jmeta.__all__
