"""A real vision transfer check offline: a small ViT pretrained on digits 0-4, adapted to digits 5-9.

No pretrained ViT ships on the package registries, so this makes one honestly: scikit-learn's 8 x 8 digits
images (1797 real scans), classes 0-4, train a 4-layer ViT from scratch with full fine-tuning and save it as a
normal Transformers folder with its image processor. Then the backbone is frozen and every method learns classes
5-9 from K images per class, against a linear probe on the frozen features. Phases (each skips what exists):

    data       digits as PNG files, one folder per class, split into train / valid / test per class
    backbone   the pretraining on classes 0-4 (full fine-tuning), saved as OUT/backbone
    transfer   unipelt train per method, K and seed on classes 5-9 (image task kind, --model OUT/backbone)
    probe      logistic regression on the frozen backbone's pooled features, per K and seed
    report     the table of test accuracy (mean ± std over seeds)

    python -m benchmarks.vision_digits all --out benchmarks/out/vision
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TRANSFER_CLASSES = (5, 6, 7, 8, 9)
METHODS = ("ft", "lora", "adapter", "prefix", "unipelt")
KS = (10, 50, 0)  # 0: every training image
IMAGE_SIZE = 32


def write_images(out: Path) -> None:
    """Every digit as an 8 x 8 grayscale PNG under out/images/{train,valid,test}/<class>/, split 60/20/20."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        index = rng.permutation(np.flatnonzero(digits.target == label))
        n = len(index)
        splits = {"train": index[: int(0.6 * n)], "valid": index[int(0.6 * n) : int(0.8 * n)]}
        splits["test"] = index[int(0.8 * n) :]
        for split, rows in splits.items():
            folder = out / "images" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for row in rows:
                pixels = (digits.images[row] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{row:04d}.png")


def build_backbone(out: Path, epochs: int, seed: int) -> dict:
    """Pretrain a small ViT on classes 0-4 from scratch and save it with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    processor = ViTImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=4,
        num_channels=3,
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=192,
        num_labels=len(PRETRAIN_CLASSES),
        id2label={i: str(c) for i, c in enumerate(PRETRAIN_CLASSES)},
        label2id={str(c): i for i, c in enumerate(PRETRAIN_CLASSES)},
    )
    model = ViTForImageClassification(config)

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        images, labels = [], []
        for i, label in enumerate(PRETRAIN_CLASSES):
            for path in sorted((out / "images" / split / str(label)).glob("*.png")):
                images.append(Image.open(path).convert("RGB"))
                labels.append(i)
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels, torch.tensor(labels)

    train_x, train_y = tensors("train")
    test_x, test_y = tensors("test")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = epochs * ((len(train_y) + 31) // 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_y), generator=generator).split(32):
            loss = model(pixel_values=train_x[batch], labels=train_y[batch]).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        accuracy = (model(pixel_values=test_x).logits.argmax(-1) == test_y).float().mean().item()
    model.save_pretrained(out / "backbone")
    processor.save_pretrained(out / "backbone")
    result = {
        "pretrain_test_accuracy": round(100 * accuracy, 2),
        "epochs": epochs,
        "train_images": len(train_y),
    }
    (out / "backbone" / "pretraining.json").write_text(json.dumps(result, indent=1))
    return result


def transfer_data(out: Path, k: int, seed: int) -> Path:
    """The classes 5-9 folders of one (K, seed): K training images per class drawn by the seed (0: all)."""
    folder = out / "transfer_data" / f"k{k}-seed{seed}"
    if folder.is_dir():
        return folder
    rng = np.random.default_rng(seed)
    for split in ("train", "valid", "test"):
        for label in TRANSFER_CLASSES:
            source = sorted((out / "images" / split / str(label)).glob("*.png"))
            if split == "train" and k:
                source = [source[i] for i in sorted(rng.choice(len(source), size=k, replace=False))]
            target = folder / split / str(label)
            target.mkdir(parents=True, exist_ok=True)
            for path in source:
                (target / path.name).symlink_to(path.resolve())
    return folder


def transfer(
    out: Path, methods: list[str], ks: list[int], seeds: list[int], epochs: int, threads: int
) -> None:
    """One `unipelt train` run per method, K and seed (finished runs are skipped, killed ones resumed).

    Rates: full fine-tuning 3e-4; the other methods 5e-3 with the fresh head at 1e-2 (at their text defaults,
    5e-4 to 1e-3, 80 steps of K = 10 left them near chance on this small backbone)."""
    for seed in seeds:
        for k in ks:
            data = transfer_data(out, k, seed)
            for method in methods:
                run = out / "runs" / f"k{k}" / method / f"seed-{seed}"
                if (run / "metrics.json").is_file():
                    continue
                command = [sys.executable, "-m", "unipelt.cli", "train", "--model", str(out / "backbone")]
                command += ["--task-type", "image-classification", "--train", str(data / "train")]
                command += ["--valid", str(data / "valid"), "--test", str(data / "test"), "--method", method]
                command += [
                    "--epochs",
                    str(epochs),
                    "--batch-size",
                    "16",
                    "--seed",
                    str(seed),
                    "--patience",
                    "5",
                ]
                command += ["--threads", str(threads), "--out", str(run)]
                if (run / "config.json").is_file():  # killed earlier: continue from its last checkpoint
                    command.append("--resume")
                command += ["--lr", "3e-4"] if method == "ft" else ["--lr", "5e-3", "--lr-head", "1e-2"]
                print(" ".join(command), flush=True)
                subprocess.run(command, check=False)


def probe(out: Path, ks: list[int], seeds: list[int]) -> None:
    """Logistic regression on the frozen backbone's final [CLS] features; test accuracy per K and seed."""
    import torch
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from transformers import ViTImageProcessor, ViTModel

    processor = ViTImageProcessor.from_pretrained(out / "backbone")
    model = ViTModel.from_pretrained(out / "backbone", add_pooling_layer=False).eval()

    def features(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label in TRANSFER_CLASSES:
            for path in sorted((folder / str(label)).glob("*.png")):
                images.append(Image.open(path).convert("RGB"))
                labels.append(label)
        with torch.no_grad():
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            states = model(pixel_values=pixels).last_hidden_state[:, 0]
        return states.numpy(), np.array(labels)

    results = {}
    for seed in seeds:
        for k in ks:
            data = transfer_data(out, k, seed)
            train_x, train_y = features(data / "train")
            test_x, test_y = features(data / "test")
            classifier = LogisticRegression(max_iter=2000).fit(train_x, train_y)
            results[f"k{k}/seed-{seed}"] = round(100 * classifier.score(test_x, test_y), 2)
    (out / "probe.json").write_text(json.dumps(results, indent=1))


def report(out: Path, methods: list[str], ks: list[int], seeds: list[int]) -> str:
    """Markdown: test accuracy mean ± std over seeds per method and K, the linear probe as a row."""
    probe_scores = json.loads((out / "probe.json").read_text()) if (out / "probe.json").is_file() else {}
    header = "| method | " + " | ".join(f"K = {k or 'all'}" for k in ks) + " |"
    lines = [header, "|---|" + "---|" * len(ks)]

    def cell(scores: list[float]) -> str:
        if not scores:
            return "–"
        spread = f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
        return f"{statistics.fmean(scores):.2f}{spread} ({len(scores)})"

    for method in methods:
        row = []
        for k in ks:
            scores = []
            for seed in seeds:
                metrics = out / "runs" / f"k{k}" / method / f"seed-{seed}" / "metrics.json"
                if metrics.is_file():
                    scores.append(100 * json.loads(metrics.read_text())["test"]["accuracy"])
            row.append(cell(scores))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    probes = [[probe_scores[f"k{k}/seed-{s}"] for s in seeds if f"k{k}/seed-{s}" in probe_scores] for k in ks]
    lines.append("| linear probe | " + " | ".join(cell(p) for p in probes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Time: the backbone about 2 min on 2 cores; a transfer run 10 s (K = 10) to 2 min (all images).",
    )
    parser.add_argument("phase", choices=["data", "backbone", "transfer", "probe", "report", "all"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/vision"))
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=list(KS))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every transfer run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    every = args.phase == "all"
    if (every or args.phase == "data") and not (args.out / "images").is_dir():
        write_images(args.out)
    if (every or args.phase == "backbone") and not (args.out / "backbone" / "config.json").is_file():
        print(json.dumps(build_backbone(args.out, args.pretrain_epochs, seed=0)))
    if every or args.phase == "transfer":
        transfer(args.out, args.methods, args.ks, args.seeds, args.epochs, args.threads)
    if every or args.phase == "probe":
        probe(args.out, args.ks, args.seeds)
    if every or args.phase == "report":
        text = report(args.out, args.methods, args.ks, args.seeds)
        (args.out / "table.md").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
