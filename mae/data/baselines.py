"""Difficulty baselines of a prepared dataset: a linear classifier on raw pixels and a small supervised CNN.

``python -m mae.data.baselines --data DIR [--cnn-epochs 8] [--out FILE.json]`` prints (and optionally writes)
val top-1 accuracies in percent. A good built-in dataset has a low linear-on-pixels accuracy and a clearly
higher CNN accuracy, leaving room for representation learning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mae.data.datasets import IN_MEMORY_KINDS, _load_npy, load_meta
from mae.errors import UserError
from mae.utils.io import atomic_write_json


def _arrays(data_dir: Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    x = _load_npy(data_dir, f"{split}_images.npy")
    y = _load_npy(data_dir, f"{split}_labels.npy", mmap=False)
    n = len(y) if limit is None else min(limit, len(y))
    return np.asarray(x[:n]), y[:n]


def linear_on_pixels(data_dir: Path, max_train: int | None = None, max_iter: int = 200, seed: int = 0) -> float:
    """Multinomial logistic regression (sklearn, standardised raw pixels) → val top-1 %."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = _arrays(data_dir, "train", max_train)
    xva, yva = _arrays(data_dir, "val")
    scaler = StandardScaler().fit(xtr.reshape(len(xtr), -1).astype(np.float32))
    clf = LogisticRegression(C=0.01, max_iter=max_iter, random_state=seed)
    clf.fit(scaler.transform(xtr.reshape(len(xtr), -1).astype(np.float32)), ytr)
    pred = clf.predict(scaler.transform(xva.reshape(len(xva), -1).astype(np.float32)))
    return float((pred == yva).mean() * 100)


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = width

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(3, w),
            block(w, w),
            nn.MaxPool2d(2),
            block(w, 2 * w),
            block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def small_cnn(
    data_dir: Path,
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    max_train: int | None = None,
    device: str = "cpu",
) -> tuple[float, float]:
    """Train :class:`SmallCNN` from scratch (random crop + flip) → (val top-1 %, wall seconds)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    meta = load_meta(data_dir)
    xtr, ytr = _arrays(data_dir, "train", max_train)
    xva, yva = _arrays(data_dir, "val")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def to_t(x):
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255) - mean) / std

    dev = torch.device(device)
    xtr_t, xva_t = to_t(xtr).to(dev), to_t(xva).to(dev)
    ytr_t = torch.from_numpy(ytr).to(dev)
    model = SmallCNN(meta["num_classes"]).to(dev)
    steps = epochs * ((len(ytr) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    s = xtr_t.shape[-1]
    pad = max(1, s // 8)
    t0 = time.perf_counter()
    bar = tqdm(total=steps * batch_size, desc="small CNN", unit="img", mininterval=2.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr_t), generator=g).to(dev)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            xb = F.pad(xtr_t[idx], (pad,) * 4, mode="reflect")
            dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
            xb = xb[..., dy : dy + s, dx : dx + s]
            if torch.rand(1, generator=g).item() < 0.5:
                xb = xb.flip(-1)
            loss = F.cross_entropy(model(xb), ytr_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(len(idx))
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xva_t[i : i + 512]).argmax(1) for i in range(0, len(xva_t), 512)])
    return float((pred.cpu().numpy() == yva).mean() * 100), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mae.data.baselines", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared dataset folder (built-in or digits kind)")
    p.add_argument("--cnn-epochs", type=int, default=6)
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("linear", "cnn"), default=None, help="run just one baseline")
    p.add_argument("--device", default="cpu", help="torch device for the CNN (cpu, cuda)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        data = Path(args.data)
        meta = load_meta(data)
        if meta["kind"] not in IN_MEMORY_KINDS:
            raise UserError(f"baselines need an in-memory kind ({', '.join(IN_MEMORY_KINDS)}), got {meta['kind']}")
        lin = t_lin = cnn = t_cnn = None
        if args.only != "cnn":
            t0 = time.perf_counter()
            lin = linear_on_pixels(data, args.max_train, seed=args.seed)
            t_lin = time.perf_counter() - t0
            print(f"linear on pixels: {lin:.1f} % ({t_lin:.0f} s)", file=sys.stderr)
        if args.only != "linear":
            cnn, t_cnn = small_cnn(data, args.cnn_epochs, seed=args.seed, max_train=args.max_train, device=args.device)
        res = {
            "dataset": meta.get("name"),
            "kind": meta["kind"],
            "num_classes": meta["num_classes"],
            "chance": 100.0 / meta["num_classes"],
            "majority": float(
                np.bincount(_load_npy(data, "val_labels.npy", mmap=False)).max() / meta["splits"]["val"] * 100
            ),
            "linear_pixels_top1": lin,
            "linear_wall_s": t_lin,
            "cnn_top1": cnn,
            "cnn_epochs": args.cnn_epochs,
            "cnn_wall_s": t_cnn,
        }
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    if args.out:
        atomic_write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
