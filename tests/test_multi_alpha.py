"""Several alphas per pass (wiseft.merge.stacked): every alpha's logits from one read of a
batch equal those of one alpha at a time (merge.interpolate, then the model)."""

from __future__ import annotations

import logging

import pytest
import torch

from wiseft.backbones import load_backbone
from wiseft.config import MergeConfig
from wiseft.heads import Classifier, PromptClassifier
from wiseft.merge import MergeError, MultiAlpha, MultiAlphaSettings, interpolate, split_alphas
from wiseft.merge.stacked import MultiAlphaError, multi_alpha_logits, stacked_bytes

ALPHAS = [0.0, 0.25, 0.5, 0.8, 1.0]
# vmap runs each layer as one batched kernel (bmm instead of mm, a grouped convolution):
# the sums are ordered differently, so logits agree to fp32 rounding, not bit for bit.
# The tiny models' logits are under 1 in size and differ by at most 1.3e-7 (about two ulps);
# the tolerance, 1e-6 absolute plus 1e-5 relative, is about 16 ulps of a logit of 0.5.
TOL = {"rtol": 1e-5, "atol": 1e-6}


def thetas(model: torch.nn.Module, scale: float = 0.05) -> tuple[dict, dict]:
    """theta_0: ``model``'s weights; theta_1: every floating tensor moved by seeded noise."""
    theta_0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    theta_1 = {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
               for k, v in theta_0.items()}
    return theta_0, theta_1


def one_at_a_time(model: torch.nn.Module, theta_0, theta_1, alphas, inputs, settings=None) -> torch.Tensor:
    """The reference: theta_alpha loaded into a copy of ``model``, then one forward, per alpha."""
    import copy

    ref = copy.deepcopy(model)
    out = []
    with torch.no_grad():
        for a in alphas:
            ref.load_state_dict(interpolate(theta_0, theta_1, a, settings))
            out.append(ref(inputs))
    return torch.stack(out)


def family_case(family: str, request) -> tuple[Classifier, object]:
    """A tiny classifier of ``family`` (random head, seeded) and a batch of 4 inputs for it."""
    if family == "open_clip":
        bb = load_backbone(request.getfixturevalue("open_clip_spec"))
    elif family in ("hf_clip", "hf_siglip"):
        bb = load_backbone({"family": "hf_clip", "name": str(request.getfixturevalue(f"tiny_{family}_dir"))})
    else:
        bb = load_backbone({"family": "sentence_transformer", "name": str(request.getfixturevalue("tiny_bert_dir")),
                            "max_length": 16})
    torch.manual_seed(0)
    if bb.modality == "text":
        inputs = bb.collate([("the market film", 0), ("a vote", 1), ("team goal and match", 2), ("phone", 0)])[0]
        dim = bb.encoder(inputs).shape[-1]
    else:
        inputs = torch.randn(4, 3, 32, 32)
        dim = bb.encoder(inputs).shape[-1]
    return Classifier(bb.encoder, torch.nn.Linear(dim, 3)).eval(), inputs


@pytest.mark.parametrize("family", ["open_clip", "hf_clip", "hf_siglip", "sentence_transformer"])
def test_every_family_vmaps_and_equals_one_alpha_at_a_time(family, request):
    model, inputs = family_case(family, request)
    theta_0, theta_1 = thetas(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    multi = MultiAlpha(model, theta_0, theta_1, ALPHAS)
    out = multi(inputs)
    assert multi.mode_used == "vmap" and multi.vmapped  # no family falls back to the loop
    ref = one_at_a_time(model, theta_0, theta_1, ALPHAS, inputs)
    assert out.shape == (len(ALPHAS), 4, 3)
    torch.testing.assert_close(out, ref, **TOL)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model's weights untouched


def test_loop_mode_gives_the_same_bits_as_one_alpha_at_a_time(request):
    """The loop runs the same kernels on the same weights as loading theta_alpha: exact."""
    model, inputs = family_case("open_clip", request)
    theta_0, theta_1 = thetas(model)
    out = multi_alpha_logits(model, theta_0, theta_1, ALPHAS, inputs, MultiAlphaSettings(mode="loop"))
    assert torch.equal(out, one_at_a_time(model, theta_0, theta_1, ALPHAS, inputs))


class Counting(torch.nn.Module):
    """An encoder that counts its forward calls (and, with ``branch``, branches on its activations)."""

    def __init__(self, branch: bool = False):
        super().__init__()
        self.lin = torch.nn.Linear(6, 5)
        self.calls = 0
        self.branch = branch

    def forward(self, x):
        self.calls += 1
        h = self.lin(x)
        if self.branch and bool(h.sum() > 0):  # data-dependent Python control flow: vmap cannot run it
            h = h * 2
        return h


def test_one_forward_per_pass_and_alphas_per_pass_chunks():
    torch.manual_seed(0)
    enc = Counting()
    model = Classifier(enc, torch.nn.Linear(5, 3)).eval()
    theta_0, theta_1 = thetas(model)
    x = torch.randn(7, 6)
    ref = one_at_a_time(model, theta_0, theta_1, ALPHAS, x)
    enc.calls = 0
    torch.testing.assert_close(multi_alpha_logits(model, theta_0, theta_1, ALPHAS, x), ref, **TOL)
    assert enc.calls == 1  # five alphas, one forward
    enc.calls = 0
    out = multi_alpha_logits(model, theta_0, theta_1, ALPHAS, x, MultiAlphaSettings(alphas_per_pass=2))
    torch.testing.assert_close(out, ref, **TOL)
    assert enc.calls == 3  # passes of 2, 2 and 1 alphas


def test_auto_falls_back_to_a_loop_where_vmap_cannot_run(caplog):
    torch.manual_seed(0)
    enc = Counting(branch=True)
    model = Classifier(enc, torch.nn.Linear(5, 3)).eval()
    theta_0, theta_1 = thetas(model)
    x = torch.randn(7, 6)
    multi = MultiAlpha(model, theta_0, theta_1, ALPHAS)
    with caplog.at_level(logging.WARNING, logger="wiseft"):
        out = multi(x)
    assert multi.mode_used == "loop" and not multi.vmapped
    assert "cannot run under torch.vmap" in caplog.text and "looping over the 5 alphas" in caplog.text
    torch.testing.assert_close(out, one_at_a_time(model, theta_0, theta_1, ALPHAS, x), rtol=0, atol=0)
    enc.calls = 0
    multi(x)
    assert enc.calls == len(ALPHAS)  # later batches go straight to the loop, no vmap attempt
    with pytest.raises(MultiAlphaError, match=r"Classifier's forward cannot run under torch.vmap .*mode 'loop'"):
        MultiAlpha(model, theta_0, theta_1, ALPHAS, MultiAlphaSettings(mode="vmap"))(x)


def test_merge_settings_pick_the_mixed_tensors_as_interpolate_does():
    """exclude=['head.*']: the head comes unchanged from theta_1 for every alpha."""
    torch.manual_seed(0)
    model = Classifier(Counting(), torch.nn.Linear(5, 3)).eval()
    theta_0, theta_1 = thetas(model)
    x = torch.randn(7, 6)
    merge = MergeConfig(exclude=("head.*",))
    multi = MultiAlpha(model, theta_0, theta_1, ALPHAS, MultiAlphaSettings(merge=merge))
    assert set(multi.fixed) == {"head.weight", "head.bias"}
    assert torch.equal(multi.fixed["head.weight"], theta_1["head.weight"])
    torch.testing.assert_close(multi(x), one_at_a_time(model, theta_0, theta_1, ALPHAS, x, merge), **TOL)


def test_stacked_weights_are_interpolates_bits():
    torch.manual_seed(0)
    model = Classifier(Counting(), torch.nn.Linear(5, 3)).eval()
    theta_0, theta_1 = thetas(model)
    multi = MultiAlpha(model, theta_0, theta_1, ALPHAS)
    for i, a in enumerate(ALPHAS):
        merged = interpolate(theta_0, theta_1, a)
        assert all(torch.equal(multi.stacked[k][i], merged[k]) for k in merged)


def tied_model() -> Classifier:
    """A classifier whose encoder's weight is its head's weight (one parameter, two names)."""
    torch.manual_seed(0)
    model = Classifier(Counting(), torch.nn.Linear(5, 5)).eval()
    model.encoder.lin = torch.nn.Linear(5, 5)
    model.encoder.lin.weight = model.head.weight
    return model


def test_tied_weights_are_stacked_once():
    model = tied_model()
    theta_0, theta_1 = thetas(model)
    for theta in (theta_0, theta_1):
        theta["head.weight"] = theta["encoder.lin.weight"]  # tied in both inputs, as in a model's state dict
    multi = MultiAlpha(model, theta_0, theta_1, ALPHAS)
    assert "encoder.lin.weight" in multi.stacked and "head.weight" not in multi.stacked
    x = torch.randn(7, 5)
    torch.testing.assert_close(multi(x), one_at_a_time(model, theta_0, theta_1, ALPHAS, x), **TOL)
    assert multi.mode_used == "vmap"


def test_a_tied_model_with_untied_inputs():
    """Weights read from a file are separate tensors, equal where the model ties them."""
    model = tied_model()
    theta_0, theta_1 = thetas(model)
    for theta in (theta_0, theta_1):
        theta["head.weight"] = theta["encoder.lin.weight"].clone()
    x = torch.randn(7, 5)
    out = multi_alpha_logits(model, theta_0, theta_1, ALPHAS, x)
    torch.testing.assert_close(out, one_at_a_time(model, theta_0, theta_1, ALPHAS, x), **TOL)


def test_split_alphas_fits_the_memory_budget():
    torch.manual_seed(0)
    model = Classifier(Counting(), torch.nn.Linear(5, 3)).eval()
    theta_0, theta_1 = thetas(model)
    per_alpha = stacked_bytes(theta_0, theta_1)
    assert per_alpha == 4 * (6 * 5 + 5 + 5 * 3 + 3)  # every fp32 tensor is mixed
    groups = split_alphas(ALPHAS, theta_0, theta_1, MultiAlphaSettings(max_memory=2 * per_alpha + 1))
    assert groups == [[0.0, 0.25], [0.5, 0.8], [1.0]]
    assert split_alphas(ALPHAS, theta_0, theta_1) == [ALPHAS]
    x = torch.randn(7, 6)
    out = multi_alpha_logits(model, theta_0, theta_1, ALPHAS, x, MultiAlphaSettings(max_memory=2 * per_alpha))
    torch.testing.assert_close(out, one_at_a_time(model, theta_0, theta_1, ALPHAS, x), **TOL)


def test_bad_settings_and_inputs_name_the_problem():
    with pytest.raises(MultiAlphaError, match="mode must be 'auto', 'vmap' or 'loop', got 'fast'"):
        MultiAlphaSettings(mode="fast")
    with pytest.raises(MultiAlphaError, match="alphas_per_pass must be at least 1"):
        MultiAlphaSettings(alphas_per_pass=0)
    torch.manual_seed(0)
    model = Classifier(Counting(), torch.nn.Linear(5, 3)).eval()
    theta_0, theta_1 = thetas(model)
    with pytest.raises(MultiAlphaError, match="no alphas"):
        multi_alpha_logits(model, theta_0, theta_1, [], torch.randn(2, 6))
    with pytest.raises(MergeError, match="model and merge output differ at key 'extra'"):
        MultiAlpha(model, {**theta_0, "extra": torch.zeros(1)}, {**theta_1, "extra": torch.zeros(1)}, ALPHAS)
    with pytest.raises(ValueError, match="alpha=1.5 is outside"):
        MultiAlpha(model, theta_0, theta_1, [0.5, 1.5])


def test_a_prompt_classifier_is_refused():
    """FLYP's head follows its mixed text tower: mixing the head's weights would be wrong."""
    torch.manual_seed(0)
    model = PromptClassifier(Counting(), None, lambda prompts: torch.ones(len(prompts), 6), (["a", "b"], ["{}"]),
                             100.0).eval()
    theta_0, theta_1 = thetas(model)
    with pytest.raises(MultiAlphaError, match="PromptClassifier's head is re-derived .* one alpha at a time"):
        MultiAlpha(model, theta_0, theta_1, ALPHAS)


def test_vmap_friendly_hands_attention_sequence_major_memory_and_restores_everything():
    """vmap's linear rule copies a batched weight once per position when the input is not
    contiguous, which nn.MultiheadAttention(batch_first=True) makes it by transposing."""
    from wiseft.merge.stacked import vmap_friendly

    attn = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(3, 5, 8)  # (batch, sequence, dim)
    seen = []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad(), vmap_friendly(attn, torch.device("cpu")):
        assert not torch.backends.mha.get_fastpath_enabled()
        # runs after vmap_friendly's own hook, so it sees what the module gets
        attn.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
        out = attn(x, x, x, need_weights=False)[0]
    (q, k, v), _ = seen[0]
    assert q is k is v and torch.equal(q, x) and q.transpose(0, 1).is_contiguous()
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    assert len(attn._forward_pre_hooks) == 1  # ours is gone, the test's own remains
    with torch.no_grad():
        torch.testing.assert_close(out, attn(x, x, x, need_weights=False)[0], **TOL)


class BranchesOnSmallBatches(Counting):
    """vmaps on batches of more than 4, not on smaller ones (it branches on its activations there)."""

    def forward(self, x):
        self.branch = x.shape[0] <= 4
        return super().forward(x)


def test_auto_falls_back_on_a_later_batch_too():
    """In mode 'auto', a batch vmap cannot run after batches it could is looped, not an error."""
    torch.manual_seed(0)
    model = Classifier(BranchesOnSmallBatches(), torch.nn.Linear(5, 3)).eval()
    theta_0, theta_1 = thetas(model)
    multi = MultiAlpha(model, theta_0, theta_1, ALPHAS)
    big, small = torch.randn(7, 6), torch.randn(3, 6)
    multi(big)
    assert multi.mode_used == "vmap" and multi.vmapped
    out = multi(small)
    assert multi.mode_used == "loop" and multi.vmapped  # the first batch's logits were vmapped
    torch.testing.assert_close(out, one_at_a_time(model, theta_0, theta_1, ALPHAS, small), rtol=0, atol=0)
