"""jmeta._refs: the one resolver of ``"module:name"`` references the registries use."""

import pytest

from jmeta._refs import resolve, resolve_all


def test_resolve_names_the_object_and_refuses_a_malformed_reference():
    import jmeta.algorithms.maml as maml

    assert resolve("jmeta.algorithms.maml:MAML") is maml.MAML
    assert resolve("jmeta.algorithms.maml:MAML.task_loss") is maml.MAML.task_loss
    assert resolve_all({"a": "jmeta.algorithms.maml:FOMAML"}) == {"a": maml.FOMAML}
    for bad in ("jmeta.algorithms.maml", ":MAML", "jmeta.algorithms.maml:"):
        with pytest.raises(ValueError, match="package.module:name"):
            resolve(bad)
