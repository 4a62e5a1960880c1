"""CI smoke run of one install extra, in a venv that holds only that extra.

    python .ci/smoke.py openclip OUTDIR    # tiny open_clip ViT, registered in this process
    python .ci/smoke.py hf OUTDIR          # tiny Hugging Face CLIPModel saved to a directory
    python .ci/smoke.py check-run RUN_DIR  # a finished run has records, a report and an export

The image modes build a tiny seeded model and a synthetic 3-colour image folder under
OUTDIR, write a run config and run ``wiseft run`` on it through the real command line
code (image data, fine-tuning, the alpha sweep on images, the report, the export), then
``wiseft predict`` on the exported model. Only the installed package and what its
extras bring are used: no pytest, nothing from tests/.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TINY_OPEN_CLIP = "wiseft-ci-tiny-ViT"
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def fail(msg: str) -> None:
    print(f"smoke: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def write_images(root: Path, per_class: int, seed: int, jitter: int = 40, fmt: str = "png",
                 classes: tuple[str, ...] = tuple(COLORS)) -> Path:
    """Colour-coded noisy 40x40 images, one folder per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.array(COLORS[c], dtype=np.int16) + rng.integers(-jitter, jitter + 1, size=(40, 40, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / c / f"{i:03d}.{fmt}")
    return root


def tiny_open_clip(out: Path) -> dict:
    """Register a tiny ViT config with open_clip (this process only) and save seeded weights."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg_dir = out / "open_clip_cfg"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    ckpt = out / "tiny_open_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return {"family": "open_clip", "name": TINY_OPEN_CLIP, "pretrained": str(ckpt)}


def tiny_hf_clip(out: Path) -> dict:
    """A tiny CLIPModel with a character-level CLIP tokenizer and image processor, saved locally."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    d = out / "tiny_hf_clip"
    d.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(tok, len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return {"family": "hf_clip", "name": str(d)}


def run_config(spec: dict, images: Path, run_dir: Path) -> dict:
    return {
        "backbone": spec,
        "data": {
            "name": "colors",
            "classnames": list(COLORS),
            "templates": ["a photo of a {}.", "a {} picture."],
            "train": {"kind": "image_folder", "root": str(images / "train")},
            "test": {"kind": "image_folder", "root": str(images / "test")},
            "shifts": {"noise": {"kind": "image_folder", "root": str(images / "shift_noise")}},
            "validation_fraction": 0.25,
        },
        "finetune": {"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 2, "warmup_steps": 1},
        "evaluation": {"batch_size": 16},
        "output_dir": str(run_dir),
        "device": "cpu",
    }


def check_run(run_dir: Path) -> None:
    """A finished run: records for alpha 0 and 1 on a reference and a shift set, the report, the export."""
    results = run_dir / "results.jsonl"
    if not results.is_file() or results.stat().st_size == 0:
        fail(f"{results} missing or empty")
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    alphas = {r.get("alpha") for r in records}
    roles = {r.get("role") for r in records}
    if not {0.0, 1.0} <= alphas:
        fail(f"{results}: alphas {sorted(a for a in alphas if a is not None)} lack 0 and 1")
    if not {"reference", "shift"} <= roles:
        fail(f"{results}: roles {sorted(r for r in roles if r)} lack reference and shift")
    if not (run_dir / "report" / "index.html").is_file():
        fail(f"{run_dir / 'report' / 'index.html'} missing")
    if not (run_dir / "export" / "wiseft.json").is_file():
        fail(f"{run_dir / 'export'} is not an exported model (no wiseft.json)")
    print(f"smoke: {run_dir}: {len(records)} records, report, export: ok")


def check_predict(lines: list[str], inputs: list[str], classnames: list[str], echo: bool = False) -> None:
    """One line per input, naming it and at least one class; ``echo`` prints them."""
    lines = [ln for ln in lines if ln.strip()]
    if len(lines) < len(inputs):
        fail(f"wiseft predict printed {len(lines)} lines for {len(inputs)} inputs: {lines!r}")
    for x, ln in zip(inputs, lines[-len(inputs):]):
        if not ln.startswith(f"{x}:") or not any(c in ln for c in classnames):
            fail(f"wiseft predict line {ln!r} does not name {x!r} and a class")
    if echo:
        for ln in lines[-len(inputs):]:
            print(f"smoke: predict: {ln}")


def cli(argv: list[str], in_process: bool) -> list[str]:
    """``wiseft ARGV`` through the installed entry point; stdout lines. In-process when a
    model registered in this process (an open_clip config) must be visible."""
    print(f"smoke: $ wiseft {' '.join(argv)}", flush=True)
    if in_process:
        from wiseft.cli import main

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(argv)
        sys.stdout.write(buf.getvalue())
        out = buf.getvalue()
    else:
        exe = shutil.which("wiseft", path=str(Path(sys.executable).parent)) or shutil.which("wiseft")
        if exe is None:
            fail("no `wiseft` command on PATH (console script not installed)")
        proc = subprocess.run([exe, *argv], stdout=subprocess.PIPE, text=True)
        sys.stdout.write(proc.stdout)
        rc, out = proc.returncode, proc.stdout
    if rc != 0:
        fail(f"`wiseft {' '.join(argv)}` exited {rc}")
    return out.splitlines()


def image_smoke(family: str, out: Path) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WISEFT_CACHE", str(out / "cache"))
    images = out / "images"
    write_images(images / "train", 8, seed=1)
    write_images(images / "test", 4, seed=2, fmt="jpg")
    write_images(images / "shift_noise", 4, seed=3, jitter=110)
    spec = tiny_open_clip(out) if family == "openclip" else tiny_hf_clip(out)
    in_process = family == "openclip"  # the tiny open_clip name exists only in this process
    run_dir = out / "run"
    cfg = out / "config.yaml"
    cfg.write_text(yaml.safe_dump(run_config(spec, images, run_dir)))
    cli(["run", str(cfg), "--no-progress"], in_process)
    check_run(run_dir)
    inputs = [str(images / "test" / "red" / "000.jpg"), str(images / "shift_noise" / "blue" / "001.png")]
    check_predict(cli(["predict", str(run_dir / "export"), *inputs], in_process), inputs, list(COLORS))


def framework_smoke(extra: str, out: Path) -> None:
    """The extra's training framework fits a toy module with wiseft's callback (a plain module
    with an evaluation function: no backbone extra needed); the run's files are there."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()

    def evaluate(m):
        acc = lambda a, b: (m(a)["logits"].argmax(1) == b).float().mean().item()  # noqa: E731
        return {"toy": {"top1": acc(x[:32], y[:32])}, "toy-val": {"top1": acc(x[32:], y[32:])}}

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x, labels=None):
            logits = self.linear(x)
            return {"logits": logits, **({"loss": F.cross_entropy(logits, labels)} if labels is not None else {})}

    settings = {"evaluate": evaluate, "output_dir": str(out), "alphas": [0.0, 0.5, 1.0]}
    if extra == "trainer":
        from transformers import Trainer, TrainingArguments

        from wiseft.integrations.transformers import WiseftCallback

        callback = WiseftCallback(**settings)
        args = TrainingArguments(str(out / "hf"), max_steps=5, use_cpu=True, report_to=[], save_strategy="no",
                                 remove_unused_columns=False, learning_rate=0.1)
        Trainer(model=Toy(), args=args, train_dataset=[{"x": a, "labels": b} for a, b in zip(x, y)],
                callbacks=[callback]).train()
    else:
        import lightning

        from wiseft.integrations.lightning import WiseftCallback

        class Lit(lightning.LightningModule):
            def __init__(self):
                super().__init__()
                self.toy = Toy()

            def forward(self, x):
                return self.toy(x)

            def training_step(self, batch, _):
                return self.toy(*batch)["loss"]

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        callback = WiseftCallback(**settings)
        loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=8)
        lightning.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False,
                          callbacks=[callback]).fit(Lit(), loader)
    alphas = {r.alpha for r in callback.result.records}
    if alphas != {0.0, 0.5, 1.0} or not (out / "summary.md").exists() or not (out / "export").is_dir():
        fail(f"{extra}: the callback's run is incomplete (alphas {sorted(alphas)})")


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] in ("openclip", "hf"):
        image_smoke(argv[0], Path(argv[1]).resolve())
    elif len(argv) == 2 and argv[0] in ("trainer", "lightning"):
        framework_smoke(argv[0], Path(argv[1]).resolve())
    elif len(argv) == 2 and argv[0] == "check-run":
        check_run(Path(argv[1]))
    elif len(argv) >= 2 and argv[0] == "check-predict":
        # check-predict INPUT [CLASS...] < output of `wiseft predict MODEL INPUT`
        check_predict(sys.stdin.read().splitlines(), [argv[1]], argv[2:] or [""], echo=True)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print(f"smoke: {' '.join(argv[:1])}: ok")


if __name__ == "__main__":
    main(sys.argv[1:])
