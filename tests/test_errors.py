"""One error base class: every named error derives from WiseftError; the CLI reports each
in one line; `wiseft list` prints what a config can name."""

import importlib
import inspect
import pkgutil

import wiseft
from wiseft.cli import main
from wiseft.core import WiseftError


def _modules():
    for info in pkgutil.walk_packages(wiseft.__path__, "wiseft."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_every_named_error_derives_from_wiseft_error():
    named = {cls for m in _modules() for _, cls in inspect.getmembers(m, inspect.isclass)
             if issubclass(cls, Exception) and cls.__module__.startswith("wiseft.")
             and cls.__name__ not in ("FieldError",)}  # config-internal: always re-raised as ConfigError
    assert {"ConfigError", "DataError", "CheckpointError", "MergeError", "BackboneError", "ResumeError",
            "LockError", "NonFiniteError", "DivergedError", "UnreadableImage", "TooManyUnreadable"} <= \
        {c.__name__ for c in named}
    assert [c.__name__ for c in named if not issubclass(c, WiseftError)] == []
    assert issubclass(WiseftError, ValueError)  # handlers written for the earlier ValueErrors still work


def test_cli_reports_a_named_error_in_one_line(capsys):
    assert main(["list", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wiseft: error: ") and err.count("\n") == 1


def test_wiseft_list_prints_every_registry(capsys):
    from wiseft.backbones.base import BACKBONES
    from wiseft.core import MERGE_METHODS, TEMPLATES
    from wiseft.data.base import DATASETS

    assert main(["list"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines == {"backbones": ", ".join(BACKBONES.names()), "datasets": ", ".join(DATASETS.names()),
                     "templates": ", ".join(TEMPLATES.names()), "merge-methods": ", ".join(MERGE_METHODS.names())}
    assert main(["list", "templates"]) == 0
    assert capsys.readouterr().out.startswith("templates: cifar, ")


def test_the_base_class_is_public():
    assert wiseft.WiseftError is WiseftError and "WiseftError" in wiseft.__all__
