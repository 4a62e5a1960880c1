"""Template sets are a registry: every shipped set can be named anywhere, unchanged."""

import subprocess
import sys

import pytest

from wiseft.core import TEMPLATES, get_templates, list_templates, register_templates, template_problem, templates_hash

# (prompts, content hash) of every shipped set: the prompts are the published ones and
# head caches and records are keyed by their hash, so they must not change
SHIPPED = {
    "cifar": (18, "20da23be985f68bb"),
    "dtd": (8, "3bf9e3ef44394d33"),
    "fmow": (16, "acb7a2ba61ab645a"),  # the reference implementation's 16 (issue 12); was a 6-prompt set
    "food101": (1, "fb94a25e334c1d34"),
    "iwildcam": (2, "19c35b4877702489"),
    "news": (4, "33f6ef8043e39e55"),
    "openai_imagenet": (80, "e30aa9d7fb289e07"),
    "openai_imagenet_simple": (7, "2104fe2593416a8a"),
    "simple": (1, "3849a0dee9e53fa0"),
    "stanford_cars": (8, "8fa6b3391ed7a986"),
    "sun397": (2, "2426112b3ce27999"),
}


@pytest.fixture
def scratch_registry(monkeypatch):
    """Sets registered in a test are gone after it."""
    monkeypatch.setattr(TEMPLATES, "_entries", dict(TEMPLATES._entries))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sets_are_unchanged(name):
    templates = get_templates(name)
    assert (len(templates), templates_hash(templates)) == SHIPPED[name]
    assert all(template_problem(t) is None for t in templates)


def test_every_shipped_set_is_registered_without_importing_datasets():
    code = ("import sys; from wiseft.core.templates import list_templates; print(','.join(list_templates())); "
            "print(any(m.startswith('wiseft.data.') and m != 'wiseft.data.base' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [",".join(sorted(SHIPPED)), "False"]


def test_register_get_and_list(scratch_registry):
    register_templates("colours", ["a {} thing.", "the colour {}."])
    assert get_templates("colours") == ("a {} thing.", "the colour {}.")
    assert "colours" in list_templates() and list_templates() == sorted(list_templates())
    register_templates("colours", ("a {}.",))  # registering again replaces
    assert get_templates("colours") == ("a {}.",)


def test_inline_lists_are_checked_and_returned():
    assert get_templates(["a {}.", "b {}."]) == ("a {}.", "b {}.")
    assert "<inline>" not in list_templates()
    with pytest.raises(ValueError, match=r"template 'b' must contain exactly one '\{\}'"):
        get_templates(["a {}.", "b"])
    with pytest.raises(ValueError, match="at least one template"):
        get_templates([])


@pytest.mark.parametrize("bad", ["no slot", "two {} {}", "a {name} {}", "a {0}"])
def test_bad_templates_are_refused(bad, scratch_registry):
    with pytest.raises(ValueError, match="exactly one"):
        register_templates("bad", ["a {}.", bad])
    assert "bad" not in list_templates()


def test_unknown_names_suggest_the_closest():
    with pytest.raises(KeyError, match=r"unknown template set 'cifr'; did you mean 'cifar'\? known: cifar, dtd"):
        get_templates("cifr")
    with pytest.raises(KeyError, match=r"unknown template set 'zzz'; known: cifar"):
        get_templates("zzz")
