"""Registry-wide checks, parametrised over the registries themselves, so a new entry is
covered as soon as it is registered: every dataset kind's builder declares its options
for the one spec check, every template set makes prompts, every backbone family
validates, and (slow: one fresh interpreter per registry, run side by side) every name
resolves after only ``import wiseft.config`` and a config naming it validates."""

import json
import subprocess
import sys
import typing

import pytest

from wiseft.backbones import exported_spec
from wiseft.backbones.base import BACKBONES, BackboneSpec
from wiseft.config import check_dataset_spec, dataset_options
from wiseft.config.backbone import FAMILY_SETTINGS
from wiseft.core import get_templates, list_templates, template_problem
from wiseft.core.templates import fill
from wiseft.data import DataError, build_dataset
from wiseft.data.base import DATASETS

# every registry fully loaded here first, so a set registered as a side effect of
# importing some module is listed too (and must still resolve in a fresh interpreter)
NAMES = {"backbones": BACKBONES.names(), "datasets": DATASETS.names(), "templates": list_templates()}

# run in a fresh interpreter: argv[1] is the registry, argv[2] its names (JSON); prints
# {name: "ok" | what failed}. Names are resolved first, before any config is validated
# (validating a config loads the dataset and backbone modules).
CHECK = r'''
import json, sys
import wiseft.config as C

registry, names = sys.argv[1], json.loads(sys.argv[2])
out = {}

def config(backbone="open_clip", templates=None, spec=None):
    spec = spec or {"kind": "image_folder", "root": "images"}
    data = {"train": spec, "test": spec, "shifts": {"shift": spec}}
    if templates is not None:
        data["templates"] = templates
    return {"backbone": {"family": backbone, "name": "m"}, "data": data}

def resolve(name):
    if registry == "templates":
        from wiseft.core.templates import get_templates
        assert get_templates(name)
    elif registry == "datasets":
        from wiseft.core import DATASETS
        assert callable(DATASETS.get(name))
    else:
        from wiseft.backbones.base import BACKBONES
        assert callable(BACKBONES.get(name))

def validate(name):
    if registry == "templates":
        cfg = C.parse_config(config(templates=name))
        assert cfg.data.templates == name
    elif registry == "datasets":
        from wiseft.config import check_dataset_spec, dataset_options
        spec = {"kind": name, **{o: "x" for o, p in dataset_options(name).items() if p.default is p.empty}}
        assert check_dataset_spec(spec) is None, check_dataset_spec(spec)
        C.parse_config(config(spec=spec))
    else:
        C.parse_config(config(backbone=name))

for step in (resolve, validate):
    for name in names:
        if out.get(name, "ok") == "ok":
            try:
                step(name)
                out[name] = "ok"
            except Exception as e:
                out[name] = f"{step.__name__}: {type(e).__name__}: {e}"
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def fresh_results() -> dict[str, dict[str, str]]:
    procs = {reg: subprocess.Popen([sys.executable, "-c", CHECK, reg, json.dumps(names)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for reg, names in NAMES.items()}
    results = {}
    for reg, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results[reg] = json.loads(out.strip().splitlines()[-1])
    return results


@pytest.mark.slow  # a fresh interpreter per registry
@pytest.mark.parametrize("registry, name", [(r, n) for r, names in NAMES.items() for n in names])
def test_name_resolves_and_validates_in_a_fresh_interpreter(fresh_results, registry, name):
    assert fresh_results[registry][name] == "ok"


def test_the_registries_hold_the_shipped_entries():
    assert set(NAMES["backbones"]) >= {"open_clip", "hf_clip", "sentence_transformer"}
    assert set(NAMES["datasets"]) >= {"image_folder", "manifest", "bbc_news", "cifar10", "imagenet", "fmow"}
    assert set(NAMES["templates"]) >= {"openai_imagenet", "cifar", "dtd", "food101", "sun397", "stanford_cars",
                                       "fmow", "iwildcam", "news", "simple", "openai_imagenet_simple"}


@pytest.mark.parametrize("registry, bad, hint", [
    (BACKBONES, "openclip", "open_clip"), (DATASETS, "imgfolder", "image_folder"), (DATASETS, "cifar-10", "cifar10"),
])
def test_unknown_names_suggest_the_closest(registry, bad, hint):
    with pytest.raises(KeyError, match=rf"unknown {registry.kind} '{bad}'; did you mean '{hint}'\? known: "):
        registry.get(bad)


def test_did_you_mean():
    from wiseft.core import did_you_mean

    assert did_you_mean("learning_rate", ["lr", "epochs"]) == "lr"
    assert did_you_mean("Open_CLIP", ["open_clip"]) == "open_clip"
    assert did_you_mean("bach_size", ["batch_size", "lr"]) == "batch_size"
    assert did_you_mean("zzz", ["lr", "epochs"]) is None
    assert did_you_mean(3, ["lr"]) is None


# -- dataset kinds --------------------------------------------------------------------

def _required(kind: str) -> dict:
    """A value for each option the kind needs, of the annotated type (a path as a string)."""
    return {name: "x" for name, p in dataset_options(kind).items() if p.default is p.empty}


@pytest.mark.parametrize("kind", NAMES["datasets"])
def test_every_dataset_option_is_annotated_for_the_spec_check(kind):
    hints = typing.get_type_hints(DATASETS.get(kind))  # resolvable: the check reads the allowed values here
    assert [o for o in dataset_options(kind) if o not in hints] == []
    assert check_dataset_spec({"kind": kind, **_required(kind)}) is None


@pytest.mark.parametrize("kind", NAMES["datasets"])
def test_every_dataset_kind_rejects_an_unknown_option_naming_the_kind(kind):
    allowed = ", ".join(dataset_options(kind))
    assert check_dataset_spec({"kind": kind, **_required(kind), "zzz": 1}) == \
        (("zzz",), f"unknown option 'zzz' for dataset kind {kind!r}; allowed: {allowed}")
    with pytest.raises(DataError, match=rf"^dataset {kind!r}: zzz: unknown option 'zzz' for dataset kind {kind!r}"):
        build_dataset({"kind": kind, **_required(kind), "zzz": 1})


@pytest.mark.parametrize("kind, option, allowed", [
    (kind, option, typing.get_args(hint)) for kind in NAMES["datasets"]
    for option, hint in typing.get_type_hints(DATASETS.get(kind)).items() if typing.get_origin(hint) is typing.Literal
])
def test_every_constrained_option_names_its_allowed_values(kind, option, allowed):
    *head, last = [repr(v) for v in allowed]  # "'a', 'b' or 'c'", as pydantic names them
    values = f"{', '.join(head)} or {last}" if head else last
    assert check_dataset_spec({"kind": kind, **_required(kind), option: "zzz"}) == \
        ((option,), f"Input should be {values}, got 'zzz'")
    with pytest.raises(DataError, match=rf"^dataset 'shift' \({kind}\): {option}: Input should be "):
        build_dataset({"kind": kind, **_required(kind), option: "zzz"}, name="shift")


# -- template sets --------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES["templates"])
def test_every_template_set_makes_prompts_with_a_class_name(name):
    templates = get_templates(name)
    assert templates and [t for t in templates if template_problem(t) is not None] == []
    for t in templates:
        assert "zebra" in fill(t, "zebra") and t.format("zebra") == fill(t, "zebra")
        assert "{" not in fill(t, "zebra") and "}" not in fill(t, "zebra")


# -- backbone families ----------------------------------------------------------------

@pytest.mark.parametrize("family", NAMES["backbones"])
def test_every_backbone_family_validates_and_declares_real_spec_fields(family):
    assert BackboneSpec(family=family, name="m").family == family
    info = BACKBONES.info(family)
    assert set(info.get("settings") or ()) <= set(FAMILY_SETTINGS)
    assert info.get("export_field", "name") in ("name", "pretrained")
    field = info.get("export_field", "name")
    assert getattr(exported_spec({"family": family, "name": "m"}, "/export/native"), field) == "/export/native"
