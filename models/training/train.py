"""Train the orientation-QA CNN (rot0/rot90/rot180/rot270) on upright slices from data.py.

Labels are made by construction: an upright slice rotated counter-clockwise by k*90 degrees
(numpy.rot90(img, k)) has label k. Augmentation (random crop/scale/aspect, left-right flip, gamma,
contrast/brightness, Gaussian noise) is applied before the rotation so the model learns orientation,
not the scanner. The resize is prep.resize_stretch: the same maths as src/preprocess.

Usage: nice /usr/bin/python3 models/training/train.py [--size 128] [--steps 2500] [--seed 7] [--aug 1|2]
CUDA is used when present, else CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prep import normalise, resize_stretch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get('ORIENT_CACHE', os.path.join(HERE, '.cache'))
MEAN, STD = 0.5, 0.25
LABELS = ['rot0', 'rot90', 'rot180', 'rot270']


class OrientationNet(nn.Module):
    """6 conv layers (32/32/64/128/128/256, BN+ReLU, max-pool between) + global average pool + linear.
    By the last conv the receptive field covers most of the image, so features such as 'face above
    brain' encode orientation; global pooling (instead of a position-specific flatten) generalises
    better from few subjects and works at any input size."""

    def __init__(self, size: int) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(1, 32, 2), block(32, 32), nn.MaxPool2d(2),
            block(32, 64), nn.MaxPool2d(2),
            block(64, 128), nn.MaxPool2d(2),
            block(128, 128), nn.MaxPool2d(2),
            block(128, 256),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(256, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class RotationEquivariant(nn.Module):
    """Serving wrapper: runs the CNN on the input in all four rotations and combines the evidence,
    out[k] = sum_j log_softmax(f(rot90(x, j)))[(k + j) % 4]. Rotating the input by 90 degrees then
    permutes the output exactly (no inconsistent answers for the same image), and the four views vote.
    Output: unnormalised log-probabilities; softmax gives the combined distribution."""

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net = net
        self.register_buffer('rev', torch.arange(size - 1, -1, -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [x]
        for _ in range(3):  # numpy.rot90(k=1) on H, W: flip columns, then transpose
            views.append(torch.index_select(views[-1], 3, self.rev).transpose(2, 3))
        n = x.shape[0]
        ls = torch.log_softmax(self.net(torch.cat(views, 0)), dim=1)
        out = ls[0:n]
        for j in range(1, 4):
            out = out + torch.roll(ls[j * n:(j + 1) * n], shifts=-j, dims=1)
        return out


def macs(size: int) -> int:
    s2 = size // 2
    total = s2 * s2 * 32 * 9 + s2 * s2 * 32 * 32 * 9
    total += (s2 // 2) ** 2 * 64 * 32 * 9 + (s2 // 4) ** 2 * 128 * 64 * 9 + (s2 // 8) ** 2 * 128 * 128 * 9
    total += (size // 32) ** 2 * 256 * 128 * 9 + 256 * 4
    return total


def load_split(split: str):
    idx = json.load(open(os.environ.get('INDEX', os.path.join(CACHE, 'index.json'))))['items']
    sel = [it for it in idx if it['split'] == split]
    return sel, [np.load(os.path.join(CACHE, 'slices', it['file'])) for it in sel]


def augment(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    # random crop: 70-100% of each side (independent: mild aspect change), random position
    ch = int(round(h * rng.uniform(0.7, 1.0)))
    cw = int(round(w * rng.uniform(0.7, 1.0)))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    img = img[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:  # left-right mirror keeps 'up' (radiological vs neurological display)
        img = img[:, ::-1]
    # occasionally pad (letterbox-like borders / zoomed-out field of view)
    if rng.random() < 0.2:
        p = int(rng.integers(1, max(2, min(ch, cw) // 6)))
        img = np.pad(img, p)
    x = resize_stretch(np.ascontiguousarray(img), size, size)
    # intensity: random tone curve (contrast-agnostic: T1/T2/PD/FLAIR, CT windows), gamma,
    # contrast/brightness, blur, cut-out, noise; stays in [0,1] as a decoder would deliver
    x = np.clip(x, 0, 1)
    if rng.random() < 0.5:  # random piecewise-linear tone curve, background (0) stays dark
        knots = np.linspace(0, 1, 5)
        vals = np.concatenate([[0.0], rng.uniform(0.05, 1.0, 4)])
        x = np.interp(x, knots, vals).astype(np.float32)
    x = x ** np.float32(np.exp(rng.uniform(-0.6, 0.6)))
    if rng.random() < 0.2:  # 3x3 box blur (softer reconstructions / lower resolution)
        p = np.pad(x, 1, mode='edge')
        x = sum(p[i:i + size, j:j + size] for i in range(3) for j in range(3)) / np.float32(9)
    if rng.random() < 0.3:  # cut-out: the model must not depend on one structure
        ch_, cw_ = (int(rng.integers(size // 8, size // 3)) for _ in range(2))
        y1, x1 = int(rng.integers(0, size - ch_)), int(rng.integers(0, size - cw_))
        x = x.copy()
        x[y1:y1 + ch_, x1:x1 + cw_] = np.float32(rng.uniform(0, 1) * float(x.mean()))
    x = x * np.float32(rng.uniform(0.7, 1.2)) + np.float32(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.7:
        x = x + rng.normal(0, rng.uniform(0.0, 0.06), x.shape).astype(np.float32)
    return np.clip(x, 0, 1).astype(np.float32)


def augment_v2(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """augment() plus geometry that real captures have and few training subjects cannot show:
    a partial field of view (crop to 40-70% of a side), a head tilted in the scanner (a small
    rotation, +-15 degrees, with shear and anisotropic scale), and a low-resolution acquisition
    (EPI, thick reformats: down to 24-72 px and back up)."""
    from scipy import ndimage
    h, w = img.shape
    if rng.random() < 0.25:  # partial field of view (e.g. a chest CT reconstructed on one region)
        ch = int(round(h * rng.uniform(0.4, 0.7)))
        cw = int(round(w * rng.uniform(0.4, 0.7)))
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        img = img[y0:y0 + ch, x0:x0 + cw]
    x = augment(img, size, rng)
    if rng.random() < 0.6:  # tilt, shear, anisotropic scale about the centre; outside the image is black
        a = np.deg2rad(rng.uniform(-15, 15))
        sh = rng.uniform(-0.1, 0.1)
        sy, sx = np.exp(rng.uniform(-0.15, 0.15, 2))
        m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[sy, sh], [0, sx]])
        inv = np.linalg.inv(m)
        c = (np.array(x.shape) - 1) / 2
        x = ndimage.affine_transform(x, inv, offset=c - inv @ c, order=1, mode='constant', cval=0.0).astype(np.float32)
    if rng.random() < 0.25:  # low-resolution acquisition
        lo = int(rng.integers(24, 73))
        x = resize_stretch(resize_stretch(np.ascontiguousarray(x), lo, lo), size, size)
    return np.clip(x, 0, 1).astype(np.float32)


def batch_from(frames, items, n: int, size: int, rng: np.random.Generator, aug=augment):
    """Balanced sampling: modality, then subject (patient), then plane, then slice, each uniformly.
    Plane balance matters: upright coronal/sagittal heads have the face below the brain, upright
    axial slices through the orbits have it above; the model must see enough of both."""
    tree: dict[str, dict[str, list[int]]] = {}
    for i, it in enumerate(items):
        key = f"{it['patient']}|{it['plane']}"
        tree.setdefault(it['modality'], {}).setdefault(key, []).append(i)
    mods = sorted(tree)
    xs = np.empty((n, 1, size, size), np.float32)
    ys = np.empty((n,), np.int64)
    for b in range(n):
        subjects = tree[mods[int(rng.integers(0, len(mods)))]]
        pool = subjects[sorted(subjects)[int(rng.integers(0, len(subjects)))]]
        img = frames[pool[int(rng.integers(0, len(pool)))]]
        x = aug(img, size, rng)
        k = int(rng.integers(0, 4))
        xs[b, 0] = normalise(np.ascontiguousarray(np.rot90(x, k)), MEAN, STD)
        ys[b] = k
    return torch.from_numpy(xs), torch.from_numpy(ys)


def eval_tensors(frames, size: int):
    """Every frame in all four rotations, preprocessed exactly as the agent does (no augmentation)."""
    xs, ys = [], []
    for f in frames:
        base = resize_stretch(f, size, size)
        for k in range(4):
            xs.append(normalise(np.ascontiguousarray(np.rot90(base, k)), MEAN, STD)[None])
            ys.append(k)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(x), 256)])
    model.train()
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--steps', type=int, default=2500)
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--lr', type=float, default=3e-3)
    ap.add_argument('--seed', type=int, default=7)
    ap.add_argument('--out', default=None)
    ap.add_argument('--aug', type=int, choices=(1, 2), default=1,
                    help='1: augment() (the shipped recipe); 2: augment_v2() (+ partial field of view, tilt/shear, low resolution; '
                         'tried for 1.1.0, see MODEL_CARD.md)')
    ap.add_argument('--select-best', action='store_true', help='ship the best-val checkpoint instead of the last')
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type == 'cpu':
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    rng = np.random.default_rng(args.seed)

    tr_items, tr_frames = load_split('train')
    va_items, va_frames = load_split('val')
    vx, vy = eval_tensors(va_frames, args.size)
    probe = np.random.default_rng(0).choice(len(tr_frames), size=min(48, len(tr_frames)), replace=False)
    tx, ty = eval_tensors([tr_frames[i] for i in probe], args.size)
    print(f'train {len(tr_items)} slices, val {len(va_items)} slices; size {args.size}; '
          f'{macs(args.size) / 1e6:.0f} MMACs; device {device}', flush=True)

    model = OrientationNet(args.size).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    best = (-1.0, None, 0)
    t0 = time.time()
    run_loss = 0.0
    for step in range(1, args.steps + 1):
        x, y = batch_from(tr_frames, tr_items, args.batch, args.size, rng, augment_v2 if args.aug == 2 else augment)
        loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += float(loss)
        if step % 100 == 0 or step == args.steps:
            acc = accuracy(model, vx, vy, device)
            tacc = accuracy(model, tx, ty, device)
            # later checkpoints win ties: the LR schedule has annealed further.
            # (The val split is small, so the shipped model is the LAST one unless --select-best.)
            if acc >= best[0]:
                best = (acc, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, step)
            print(f'step {step} loss {run_loss / 100:.3f} train_acc {tacc:.3f} val_acc {acc:.3f} ({time.time() - t0:.0f}s)', flush=True)
            run_loss = 0.0
        if step % 500 == 0:
            torch.save({'state_dict': model.state_dict(), 'size': args.size}, os.path.join(CACHE, f'snapshot_{args.size}.pt'))

    out = args.out or os.path.join(CACHE, f'model_{args.size}.pt')
    last = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    chosen, chosen_step = (best[1], best[2]) if args.select_best else (last, args.steps)
    torch.save({'state_dict': chosen, 'size': args.size, 'mean': MEAN, 'std': STD, 'labels': LABELS,
                'best_val_acc': best[0], 'best_step': best[2], 'chosen_step': chosen_step, 'steps': args.steps, 'seed': args.seed,
                'batch': args.batch, 'lr': args.lr, 'aug': args.aug, 'train_seconds': time.time() - t0,
                'device': device.type}, out)
    print(f'saved {out} (step {chosen_step}); best val_acc {best[0]:.3f} at step {best[2]}', flush=True)


if __name__ == '__main__':
    main()
