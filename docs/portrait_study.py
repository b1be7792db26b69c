"""Can the default model tell portraits from scenes by itself (to colorize portraits with `faces`)?

A logistic head on features the bundled `general` computes anyway, trained on LFW training photos
(portraits) against as many Imagenette training photos (scenes), then scored on held-out photos and on real
old photos, photo by photo. Features: ``cond``, its CVAE condition encoder's (the 64x64 grey's: the mean of
each of its 4 feature maps and the max of the last, 2,944 numbers; nearly free), or ``vgg``, VGG16 relu4_3's
(mean and max per channel, 1,024 numbers). docs/training.md, "Vividness", has the results.

    python docs/portrait_study.py SHARED/data IMAGENETTE OLD_PHOTOS... \
        [--features vgg] [--per-class 500] [--held-out 200] [--l2 3]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from colorize_cli.files.imageio import ImageReadError, read_image
from colorize_cli.model.color import grey_from_l, normalize_u8
from colorize_cli.model.colorizer import Colorizer, prepare

HERE = Path(__file__).resolve().parent


def features(colorizer: Colorizer, paths: list[Path], kind: str) -> tuple[np.ndarray, list[Path]]:
    rows, kept = [], []
    for i in range(0, len(paths), 16):
        preps = []
        for p in paths[i:i + 16]:
            try:
                preps.append(prepare(read_image(p).bgr))   # as `colorize` reads a photo
            except ImageReadError:
                continue
            kept.append(p)
        with torch.no_grad():
            if kind == "vgg":
                grey = torch.from_numpy(grey_from_l(np.stack([q.l224 for q in preps])))   # (B, 224, 224)
                f = colorizer.vgg(grey)                                                   # (B, 512, 28, 28)
                rows.append(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1).double().numpy())
                continue
            grey = torch.from_numpy(normalize_u8(np.stack([q.l64 for q in preps])))[:, None]   # (B,1,64,64)
            maps = colorizer.cvae.cond_encoder(grey)                                       # 32, 16, 8, 4 px
        rows.append(torch.cat([m.mean((2, 3)) for m in maps] + [maps[-1].amax((2, 3))], 1).double().numpy())
    return np.concatenate(rows), kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shared_data", type=Path, help="the folder holding lfw-deepfunneled/ and lfw-splits/")
    ap.add_argument("imagenette", type=Path, help="Imagenette (train/, val/)")
    ap.add_argument("old", type=Path, nargs="*", help="folders of real old photos, scored photo by photo")
    ap.add_argument("--features", choices=["cond", "vgg"], default="cond")
    ap.add_argument("--per-class", type=int, default=800, help="training photos of each kind")
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--held-out", type=int, default=300, help="held-out photos of each kind")
    a = ap.parse_args()
    torch.manual_seed(0)
    rnd = random.Random(0)
    colorizer = Colorizer.load("general", "cpu", bf16=False, int8=False, cpu_streams=1)
    lfw = [a.shared_data / r for r in (a.shared_data / "lfw-splits" / "train.txt").read_text().split()]
    scenes = sorted((a.imagenette / "train").glob("*/*"))
    xp, _ = features(colorizer, rnd.sample(lfw, a.per_class), a.features)
    xn, _ = features(colorizer, rnd.sample(scenes, a.per_class), a.features)
    x = np.concatenate([xp, xn])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt, yt = torch.tensor((x - mu) / sd), torch.tensor(np.r_[np.ones(len(xp)), np.zeros(len(xn))])
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500)

    def loss():
        opt.zero_grad()
        value = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + a.l2 * (w * w).sum()
        value.backward()
        return value

    opt.step(loss)

    def portrait(paths):
        f, kept = features(colorizer, paths, a.features)
        return torch.sigmoid(torch.tensor((f - mu) / sd) @ w + b).detach().numpy(), kept

    lfw_test = (a.shared_data / "lfw-splits" / "test.txt").read_text().split()[:a.held_out]
    val = (HERE / "general-val-test1000.txt").read_text().split()[:a.held_out]
    held = {f"LFW test ({a.held_out})": [a.shared_data / r for r in lfw_test],
            f"Imagenette val ({a.held_out})": [a.imagenette / "val" / r for r in val]}
    for name, paths in held.items():
        p, _ = portrait(paths)
        print(f"{name}: taken for portraits {np.mean(p > 0.5):.1%}")
    old = sorted(p for d in a.old for p in d.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if old:
        p, kept = portrait(old)
        for q, path in sorted(zip(p, kept), key=lambda t: -t[0]):
            print(f"  {q:.3f}  {path.name}")


if __name__ == "__main__":
    main()
