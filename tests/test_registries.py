"""Registry-wide checks: every backbone family, dataset kind and template set resolves in
a fresh interpreter after only ``import wiseft.config``, and a config naming it
validates. The names come from the registries themselves, so a new entry is covered
as soon as it is registered. One fresh interpreter per registry, run side by side."""

import json
import subprocess
import sys

import pytest

from wiseft.backbones.base import BACKBONES
from wiseft.data.base import DATASETS
from wiseft.templates import list_templates

pytestmark = pytest.mark.slow  # a fresh interpreter per registry

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
        from wiseft.templates import get_templates
        assert get_templates(name)
    elif registry == "datasets":
        from wiseft.data.base import DATASETS
        assert callable(DATASETS.get(name))
    else:
        from wiseft.backbones.base import BACKBONES
        assert callable(BACKBONES.get(name))

def validate(name):
    if registry == "templates":
        cfg = C.parse_config(config(templates=name))
        assert cfg.data.templates == name
    elif registry == "datasets":
        from wiseft.data.base import check_dataset_spec, dataset_options
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
    from wiseft.registry import did_you_mean

    assert did_you_mean("learning_rate", ["lr", "epochs"]) == "lr"
    assert did_you_mean("Open_CLIP", ["open_clip"]) == "open_clip"
    assert did_you_mean("bach_size", ["batch_size", "lr"]) == "batch_size"
    assert did_you_mean("zzz", ["lr", "epochs"]) is None
    assert did_you_mean(3, ["lr"]) is None
