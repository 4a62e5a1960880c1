"""Random mutations of a valid tiny config: parse_config returns a RunConfig or raises
a ConfigError whose message names a field, never another exception (issue 13)."""

import copy
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wiseft.config import ConfigError, RunConfig, parse_config

VALID = {
    "backbone": {"family": "open_clip", "name": "ViT-B-32", "pretrained": "openai"},
    "data": {
        "name": "colors",
        "classnames": ["red", "green", "blue"],
        "templates": ["a photo of a {}."],
        "train": {"kind": "image_folder", "root": "train"},
        "test": {"kind": "manifest", "path": "test.csv"},
        "shifts": {"noise": {"kind": "image_folder", "root": "noise", "subset": True}},
        "validation_fraction": 0.1,
        "max_unreadable": 0.01,
    },
    "finetune": {"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 0},
    "variants": {"fast": {"lr": 1e-2}},
    "alphas": [0.0, 0.5, 1.0],
    "select_alpha": 0.5,
    "evaluation": {"batch_size": 16, "precision": "fp32"},
    "device": "cpu",
}

SECTIONS = ("", "backbone", "data", "data.train", "data.test", "data.shifts.noise", "finetune", "variants.fast",
            "evaluation")
KEYS = ["kind", "root", "path", "split", "class_map", "subset", "classnames", "lr", "epochs", "batch_size",
        "alphas", "alpha", "mode", "precision", "max_unreadable", "validation_fraction", "templates", "name",
        "family", "device", "select_alpha", "allow_extrapolation", "shifts", "train", "test", "seed", "cache",
        "num_workers", "grad_clip", "fp32_check", "data", "finetune", "evaluation", "variants", "zzz"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "e2e", "linear", "bf16", "image_folder", "manifest", "cifar10", "imagenet-r",
                     "nosuchkind", "train", "test", "tran", "auto", "cuda:0", "gpu", "openai_imagenet", "{}",
                     "a {} photo", "x/y", "finetuned", "1e-3"]),
    st.lists(st.one_of(st.floats(-2, 2), st.just(float("nan")), st.text(max_size=4), st.integers(-3, 3)), max_size=4),
    st.dictionaries(st.sampled_from(["kind", "root", "red", "lr", "x"]),
                    st.one_of(st.text(max_size=5), st.integers(-2, 2), st.booleans()), max_size=3),
)


def _node(cfg: dict, dotted: str):
    node = cfg
    for part in filter(None, dotted.split(".")):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node if isinstance(node, dict) else None


mutation = st.tuples(st.sampled_from(["set", "delete", "replace_section"]), st.sampled_from(SECTIONS),
                     st.sampled_from(KEYS), VALUES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=3))
def test_mutated_configs_parse_or_fail_with_a_named_field(mutations):
    cfg = copy.deepcopy(VALID)
    for op, section, key, value in mutations:
        node = _node(cfg, section)
        if node is None:
            continue
        if op == "set":
            node[key] = value
        elif op == "delete":
            node.pop(key, None)
        elif section:
            parent, _, leaf = section.rpartition(".")
            target = _node(cfg, parent)
            if target is not None:
                target[leaf] = value
    try:
        out = parse_config(cfg, source="fuzz.yaml")
    except ConfigError as e:
        msg = str(e)
        assert msg.startswith("fuzz.yaml: "), msg
        field = msg[len("fuzz.yaml: "):].split(":", 1)[0]
        assert field and " " not in field.strip(), f"no field named: {msg}"
        return
    assert isinstance(out, RunConfig)
    assert all(math.isfinite(a) for a in out.alphas)
    assert 0.0 <= out.data.max_unreadable <= 1.0
