"""Tiny models and datasets, built offline in fixtures."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# precision 'auto' (the default) is bf16 on a CPU with native bf16 and fp32 on one without: the
# suite runs as on a CPU without it, so it computes the same on both kinds of machine; the tests
# of the decision stub the detection both ways (tests/test_precision.py)
os.environ["WISEFT_NATIVE_BF16"] = "0"
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_OPEN_CLIP = "wiseft-tiny-ViT"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WISEFT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_open_clip_name(tmp_path_factory) -> str:
    """Registers a tiny ViT CLIP config with open_clip and returns its name."""
    import open_clip

    d = tmp_path_factory.mktemp("open_clip_cfg")
    (d / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(d)
    return TINY_OPEN_CLIP


@pytest.fixture(scope="session")
def tiny_open_clip_checkpoint(tiny_open_clip_name, tmp_path_factory) -> Path:
    """A seeded random tiny model saved as a checkpoint file, so every load gets the same weights."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_open_clip_name, pretrained=None)
    path = tmp_path_factory.mktemp("oc_ckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def open_clip_spec(tiny_open_clip_name, tiny_open_clip_checkpoint) -> dict:
    return {"family": "open_clip", "name": tiny_open_clip_name, "pretrained": str(tiny_open_clip_checkpoint)}


def _write_clip_tokenizer(d: Path) -> None:
    chars = [chr(c) for c in range(33, 127)]
    vocab = {}
    for tok in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(tok, len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")


def _save_tiny_hf(d: Path, config_cls, model_cls, processor, max_positions: int) -> Path:
    """A tiny Hugging Face image-text model with a CLIP tokenizer and ``processor``, saved in ``d``."""
    from transformers import CLIPTokenizer

    _write_clip_tokenizer(d)
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    torch.manual_seed(0)
    cfg = config_cls(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=max_positions),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        **({"projection_dim": 16} if config_cls.__name__ == "CLIPConfig" else {}),
    )
    model_cls(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    processor.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny Hugging Face CLIPModel with tokenizer and image processor, saved locally."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _save_tiny_hf(tmp_path_factory.mktemp("hf_clip"), CLIPConfig, CLIPModel, processor, 77)


@pytest.fixture(scope="session")
def tiny_hf_siglip_dir(tmp_path_factory) -> Path:
    """A tiny Hugging Face SiglipModel (a CLIP tokenizer stands in for SigLIP's
    SentencePiece one, which needs a model file we cannot fetch)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    return _save_tiny_hf(tmp_path_factory.mktemp("hf_siglip"), SiglipConfig, SiglipModel, processor, 16)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT text encoder with a word-level vocabulary, saved as a plain HF directory."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tiny_bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(
        "this news article is about business entertainment politics sports technology the a of and "
        "shares market film music election minister match goal phone software profit vote team".split()))
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(d / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _image(color, rng, size=40, jitter=40, invert=False) -> Image.Image:
    base = np.array(color, dtype=np.int16)
    if invert:
        base = 255 - base
    arr = base + rng.integers(-jitter, jitter + 1, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_image_folder(root: Path, per_class: int, seed: int, classes=tuple(COLORS), fmt="png", **kw) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _image(COLORS[c], rng, **kw).save(root / c / f"{i:03d}.{fmt}")
    return root


@pytest.fixture(scope="session")
def image_data(tmp_path_factory) -> Path:
    """Colour-coded synthetic images: train, test, a noisier shift and a 2-class subset shift."""
    root = tmp_path_factory.mktemp("images")
    write_image_folder(root / "train", 12, seed=1)
    write_image_folder(root / "test", 6, seed=2, fmt="jpg")
    write_image_folder(root / "shift_noise", 6, seed=3, jitter=110)
    write_image_folder(root / "shift_subset", 5, seed=4, classes=("green", "blue"), jitter=80)
    return root


def run_config(spec: dict, image_data: Path, out: Path, **overrides) -> dict:
    cfg = {
        "backbone": spec,
        "data": {
            "name": "colors",
            "classnames": list(COLORS),
            "templates": ["a photo of a {}.", "a {} picture."],
            "train": {"kind": "image_folder", "root": str(image_data / "train")},
            "test": {"kind": "image_folder", "root": str(image_data / "test")},
            "shifts": {
                "noise": {"kind": "image_folder", "root": str(image_data / "shift_noise")},
                "subset": {"kind": "image_folder", "root": str(image_data / "shift_subset"), "subset": True},
            },
            "validation_fraction": 0.25,
        },
        "finetune": {"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 2, "warmup_steps": 1},
        "evaluation": {"batch_size": 16},
        "output_dir": str(out),
        "device": "cpu",
    }
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def zeroshot_setup(open_clip_spec, image_data, tmp_path_factory):
    """(zero-shot model, training set, backbone) of the tiny open_clip run, for training tests."""
    from wiseft.backbones import load_backbone
    from wiseft.config import parse_config
    from wiseft.heads import build_zeroshot_model
    from wiseft.pipeline import prepare_data

    cfg = parse_config(run_config(open_clip_spec, image_data, tmp_path_factory.mktemp("run")))
    data = prepare_data(cfg)
    backbone = load_backbone(cfg.backbone)
    model = build_zeroshot_model(backbone, data.classnames, data.templates, cache=False)
    return model, data.train, backbone


# the integer type of each float type's width: bit-for-bit comparisons
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
        torch.bfloat16: torch.int16}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (tells -0.0 from 0.0; a NaN equals the same NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in BITS:
        return torch.equal(a.contiguous().view(BITS[a.dtype]), b.contiguous().view(BITS[b.dtype]))
    return torch.equal(a, b)


def sigint_default() -> None:
    """``preexec_fn`` of a child a test interrupts with SIGINT: Ctrl-C's default action. A
    background job of a shell without job control (``cmd &`` in a script, as CI may run)
    starts with SIGINT ignored, its children inherit that, and Python then installs no
    KeyboardInterrupt handler, so the signal would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """An uncompressed tar of ``(member name, bytes)``, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
