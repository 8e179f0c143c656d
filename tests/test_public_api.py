"""Every public name is documented with an example."""

import pytest

import luxjax
import luxjax.experimental
import luxjax.testing
import luxjax.training

MODULES = [luxjax, luxjax.experimental, luxjax.testing, luxjax.training]
PUBLIC = [
    (module.__name__, name, getattr(module, name))
    for module in MODULES
    for name in dir(module)
    if not name.startswith("_") and not isinstance(getattr(module, name), type(luxjax))
]


@pytest.mark.parametrize(("module", "name", "obj"), PUBLIC, ids=[f"{m}.{n}" for m, n, _ in PUBLIC])
def test_public_name_has_docstring_with_example(module, name, obj):
    if isinstance(obj, str):
        return
    doc = obj.__doc__ or ""
    assert doc.strip(), f"{module}.{name} has no docstring"
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        assert "Example" in doc, f"{module}.{name}'s docstring has no example"
