import pytest
import torch

from wiseft import load_backbone, zeroshot_head
from wiseft.heads import Classifier, head_cache_dir

CLASSES = ["red", "green", "blue", "yellow"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "{} things."]


def test_zeroshot_head_equals_open_clip_builder(open_clip_spec):
    from open_clip import build_zero_shot_classifier, get_tokenizer

    bb = load_backbone(open_clip_spec)
    head = zeroshot_head(bb, CLASSES, TEMPLATES, cache=False, batch_size=5)  # batches cross classes
    model = bb.extras["model"]
    ref = build_zero_shot_classifier(model, tokenizer=get_tokenizer(open_clip_spec["name"]),
                                     classnames=CLASSES, templates=TEMPLATES, num_classes_per_batch=2,
                                     device="cpu", use_tqdm=False)
    expect = ref.T * model.logit_scale.detach().exp()
    torch.testing.assert_close(head.weight, expect, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(head.bias) == 0
    assert abs(bb.logit_scale - model.logit_scale.detach().exp().item()) < 1e-6


def test_zeroshot_head_is_cached_by_content(open_clip_spec):
    bb = load_backbone(open_clip_spec)
    first = zeroshot_head(bb, CLASSES, TEMPLATES)
    files = list(head_cache_dir().glob("*.safetensors"))
    assert len(files) == 1
    again = zeroshot_head(bb, CLASSES, TEMPLATES)
    assert torch.equal(first.weight, again.weight)
    zeroshot_head(bb, CLASSES, TEMPLATES[:1])  # other templates: another entry
    zeroshot_head(bb, CLASSES[::-1], TEMPLATES)  # other class order: another entry
    assert len(list(head_cache_dir().glob("*.safetensors"))) == 3


def test_classifier_normalises_features_before_the_head(open_clip_spec):
    bb = load_backbone(open_clip_spec)
    head = zeroshot_head(bb, CLASSES, TEMPLATES, cache=False)
    clf = Classifier(bb.encoder, head).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = bb.encoder(x)
        expect = (feats / feats.norm(dim=-1, keepdim=True)) @ head.weight.T
        torch.testing.assert_close(clf(x), expect, atol=1e-5, rtol=1e-5)
        # at initialisation the logits are logit_scale * cosine similarity
        assert clf(x).abs().max() <= bb.logit_scale * (1 + 1e-5)


@pytest.mark.parametrize("classnames, templates, message", [
    (["cat", "dog", "cat"], ["a photo of a {}."], r"classnames\[2\]: class 'cat' is listed twice \(also at classnames\[0\]\)"),
    (["cat", " "], ["a photo of a {}."], r"classnames\[1\]: empty class name"),
    ([], ["a photo of a {}."], "classnames: no class names"),
    ("cat", ["a photo of a {}."], "classnames: give a list of class names"),
    (["cat", "dog"], [], "templates: give at least one template"),
    (["cat", "dog"], ["a photo of a cat."], "must contain exactly one"),
    (["cat", "dog"], ["a {} of a {}."], "must contain exactly one"),
    (["cat", "dog"], "no-such-set", "unknown template set"),
])
def test_library_checks_what_the_config_checks(classnames, templates, message):
    """zeroshot_head / zeroshot_weights refuse what ``wiseft run`` refuses, before any
    encoding or cache look-up (issue 24.10: duplicate names built identical rows)."""
    from wiseft.core.templates import PromptError
    from wiseft.heads import zeroshot_head, zeroshot_weights

    def never(prompts):
        raise AssertionError("encoded a prompt")

    class Stub:
        encode_text = staticmethod(never)

    with pytest.raises(PromptError, match=message):
        zeroshot_weights(never, classnames, templates)
    with pytest.raises(PromptError, match=message):
        zeroshot_head(Stub(), classnames, templates)


def test_library_takes_a_template_set_by_name():
    from wiseft.heads import zeroshot_weights

    calls = []

    def encode(prompts):
        calls.extend(prompts)
        return torch.ones(len(prompts), 4)

    assert zeroshot_weights(encode, ("cat", "dog"), "simple").shape == (2, 4)
    assert calls and all("cat" in p or "dog" in p for p in calls)


class _CacheStub:
    """A backbone stand-in for the head cache: fixed text embeddings, no model."""
    logit_scale = 10.0

    @staticmethod
    def fingerprint():
        return "stub-checksum"

    @staticmethod
    def encode_text(prompts):
        return torch.tensor([[float(sum(map(ord, p)) % 97), float(len(p)), 1.0, 2.0] for p in prompts])


@pytest.mark.parametrize("damage", ["zeros", "edited", "no checksum"])
def test_a_well_formed_head_cache_entry_is_checked_against_its_checksum(damage, caplog):
    """Issue 24.8: an entry of the right shape whose weights are all zero (or edited, or
    written without a checksum) is not used: a warning, and the head is rebuilt."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    fresh = zeroshot_head(_CacheStub(), ["cat", "dog"], ["a {}."]).weight.detach().clone()
    (entry,) = head_cache_dir().glob("*.safetensors")
    with safe_open(str(entry), "pt") as f:
        meta = f.metadata()
    assert len(meta["sha256"]) == 64
    weight = {"zeros": torch.zeros_like(fresh), "edited": fresh * 2, "no checksum": fresh}[damage]
    save_file({"weight": weight.contiguous()}, str(entry), metadata=None if damage == "no checksum" else meta)
    with caplog.at_level("WARNING", logger="wiseft"):
        again = zeroshot_head(_CacheStub(), ["cat", "dog"], ["a {}."]).weight.detach()
    assert "rebuilding" in caplog.text
    torch.testing.assert_close(again, fresh)
    caplog.clear()
    with caplog.at_level("WARNING", logger="wiseft"):  # rewritten whole: trusted next time
        torch.testing.assert_close(zeroshot_head(_CacheStub(), ["cat", "dog"], ["a {}."]).weight.detach(), fresh)
    assert "rebuilding" not in caplog.text


def test_zeros_under_a_matching_checksum_are_still_refused(caplog):
    from safetensors.torch import save_file

    from wiseft.heads import weight_checksum

    fresh = zeroshot_head(_CacheStub(), ["cat", "dog"], ["a {}."]).weight.detach().clone()
    (entry,) = head_cache_dir().glob("*.safetensors")
    zeros = torch.zeros_like(fresh)
    save_file({"weight": zeros}, str(entry), metadata={"sha256": weight_checksum(zeros)})
    with caplog.at_level("WARNING", logger="wiseft"):
        torch.testing.assert_close(zeroshot_head(_CacheStub(), ["cat", "dog"], ["a {}."]).weight.detach(), fresh)
    assert "all zero" in caplog.text
