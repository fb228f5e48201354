"""Shared test helpers: sample inputs and references (after pytorch/extension-cpp's
test file), comparison rules, device parametrization, tiny on-disk data sets.
Test modules import from here, never from each other."""
from __future__ import annotations

import io
import pickle
import random
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import metafast
from metafast.ops import mlp_adapt
from metafast.reference import adapt_task

def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (absolute when b is zero)."""
    denom = b.norm().item()
    return (a - b).norm().item() / (denom if denom > 0 else 1.0)


def max_rel_err(xs, ys) -> float:
    return max(rel_err(x, y) for x, y in zip(xs, ys))


requires_extension = pytest.mark.skipif(not metafast._extension.available(), reason="metafast._C not built")


# One test body for every device: parametrize with DEVICES (CUDA entries are
# skipped without a GPU by the "cuda" mark).
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def random_mlp_task(sizes, tasks, shots, queries, loss, dtype=torch.float64, device="cpu", generator=None):
    """Random support/query tensors for an MLP of the given widths."""
    g = generator
    sx = torch.randn(tasks, shots, sizes[0], dtype=dtype, device=device, generator=g)
    qx = torch.randn(tasks, queries, sizes[0], dtype=dtype, device=device, generator=g)
    if loss == "mse":
        sy = torch.randn(tasks, shots, sizes[-1], dtype=dtype, device=device, generator=g)
        qy = torch.randn(tasks, queries, sizes[-1], dtype=dtype, device=device, generator=g)
    else:
        sy = torch.randint(0, sizes[-1], (tasks, shots), device=device, generator=g)
        qy = torch.randint(0, sizes[-1], (tasks, queries), device=device, generator=g)
    return sx, sy, qx, qy


# ---------------------------------------------------------------- mlp_adapt
TOL = 1e-10


def random_config(seed):
    rng = random.Random(seed)
    depth = rng.randint(1, 5)
    loss = rng.choice(["mse", "cross_entropy"])
    sizes = [rng.randint(1, 12) for _ in range(depth + 1)]
    if loss == "cross_entropy":
        sizes[-1] = max(sizes[-1], 2)
    return dict(sizes=sizes, steps=rng.randint(1, 5), tasks=rng.randint(1, 4), shots=rng.randint(1, 6),
                activation=rng.choice(["relu", "tanh"]), loss=loss, meta_sgd=rng.random() < 0.5,
                lr=rng.choice([0.05, 0.2, 0.5]))


def eager_adapt(model, flat, lrs_flat, sx, sy, lr, steps, first_order, loss, weights=None):
    """The per-task eager loop, on the flat parameter layout of mlp_adapt
    (weights [T, K]: per-example support loss weights)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    split = lambda v: dict(zip(names, [c.view(s) for c, s in zip(v.split([s.numel() for s in shapes]), shapes)]))
    adapted, losses = [], []
    for t in range(sx.shape[0]):
        params, task_losses = adapt_task(model, split(flat), sx[t], sy[t], lr, steps, first_order, loss,
                                         None if lrs_flat is None else split(lrs_flat),
                                         None if weights is None else weights[t])
        adapted.append(torch.cat([params[n].reshape(-1) for n in names]))
        losses.append(torch.stack(task_losses))
    return torch.stack(adapted), torch.stack(losses)


def meta_objective(adapted, losses, w_adapted, w_losses):
    # Exercises both outputs' gradients (query-loss-like and support-loss terms).
    return (adapted * w_adapted).sum() + (losses * w_losses).sum() + (adapted ** 2).sum() * 0.1


def compare_to_reference(cfg, first_order, device="cpu", dtype=torch.float64, x_grad=True, seed=0):
    torch.manual_seed(seed)
    sizes = cfg["sizes"]
    model = metafast.nn.MLP(sizes, cfg["activation"]).to(device, dtype)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_()
    lrs = (torch.rand_like(flat) * cfg["lr"]).requires_grad_() if cfg["meta_sgd"] else None
    sx, sy, _, _ = random_mlp_task(sizes, cfg["tasks"], cfg["shots"], 1, cfg["loss"], dtype, device)
    sx.requires_grad_(x_grad)
    w_a = torch.randn(cfg["tasks"], flat.numel(), dtype=dtype, device=device)
    w_l = torch.randn(cfg["tasks"], cfg["steps"], dtype=dtype, device=device)
    inputs = [t for t in (flat, lrs, sx) if t is not None and t.requires_grad]

    a, l = mlp_adapt(flat, sx, sy, sizes, cfg["steps"], lr=cfg["lr"], lrs=lrs, activation=cfg["activation"],
                     loss=cfg["loss"], first_order=first_order)
    got = torch.autograd.grad(meta_objective(a, l, w_a, w_l), inputs)
    ra, rl = eager_adapt(model, flat, lrs, sx, sy, cfg["lr"], cfg["steps"], first_order, cfg["loss"])
    want = torch.autograd.grad(meta_objective(ra, rl, w_a, w_l), inputs)
    return max_rel_err([a, l], [ra, rl]), max_rel_err(got, want)


def compare_query_to_reference(cfg, first_order, seed=0):
    """The query forward fused into the same call: max relative errors of the
    outputs and losses, and of every gradient (params, rates, support and query
    inputs), against the eager loop."""
    sizes, loss = cfg["sizes"], cfg["loss"]
    torch.manual_seed(seed)
    model = metafast.nn.MLP(sizes, cfg["activation"]).double()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).requires_grad_()
    lrs = (torch.rand_like(flat) * cfg["lr"]).requires_grad_()
    sx, sy, qx, qy = random_mlp_task(sizes, cfg["tasks"], cfg["shots"], cfg["shots"] + 3, loss)
    sx.requires_grad_()
    qx.requires_grad_()
    w = torch.randn(cfg["tasks"], qx.shape[1], sizes[-1], dtype=torch.float64)

    def objective(query_output, query_losses, support_losses):
        return query_losses.sum() + (query_output * w).sum() * 0.3 + support_losses.sum() * 0.2

    _, l, qo, ql = mlp_adapt(flat, sx, sy, sizes, cfg["steps"], lrs=lrs, activation=cfg["activation"], loss=loss,
                             first_order=first_order, query_x=qx, query_y=qy)
    got = torch.autograd.grad(objective(qo, ql, l), [flat, lrs, sx, qx])
    ra, rl = eager_adapt(model, flat, lrs, sx, sy, 0.0, cfg["steps"], first_order, loss)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    outs, losses = [], []
    for t in range(cfg["tasks"]):
        params = dict(zip(names, [c.view(s) for c, s in zip(ra[t].split([s.numel() for s in shapes]), shapes)]))
        out = torch.func.functional_call(model, params, (qx[t],))
        outs.append(out)
        losses.append(metafast.losses.resolve_loss(loss)[1](out, qy[t]))
    rqo, rql = torch.stack(outs), torch.stack(losses)
    want = torch.autograd.grad(objective(rqo, rql, rl), [flat, lrs, sx, qx])
    return max_rel_err([qo, ql], [rqo, rql]), max_rel_err(got, want)


# ---------------------------------------------------------------- data
def _png(rng: np.random.Generator, size: int = 105) -> bytes:
    """A binary PNG like Omniglot's: black ink (0) strokes on white (1)."""
    from PIL import Image  # the cli extra: imported only by the data tests

    ink = rng.random((size, size)) < 0.15
    im = Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_fake_omniglot(root: Path, chars=(("A", 3), ("B", 2)), eval_chars=(("C", 3),), drawers=4, seed=0):
    """Write a tiny images_background.zip / images_evaluation.zip pair in ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for archive, alphabets in (("images_background", chars), ("images_evaluation", eval_chars)):
        with zipfile.ZipFile(root / f"{archive}.zip", "w") as zf:
            zf.writestr(f"{archive}/", b"")
            for alpha, nchar in alphabets:
                for c in range(1, nchar + 1):
                    n += 1
                    for d in range(1, drawers + 1):
                        zf.writestr(f"{archive}/{alpha}/character{c:02d}/{n:04d}_{d:02d}.png", _png(rng))
    return n


# ---------------------------------------------------------------- image episodes
def image_episodes(tasks, ways, shots, queries, channels, side, seed=0):
    """Random float64 images [T, N·K, C, S, S] with labels 0..N-1 repeated per class."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, ways * shots, channels, side, side, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, ways * queries, channels, side, side, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return sx, sy, qx, qy


def assert_meta_gradients_match(model, out, ref, tol=TOL):
    """BatchedMAML's output ``out`` against the eager reference's loss ``ref``: the
    losses and every parameter's meta-gradient (each nonzero) to ``tol`` relative."""
    params = list(model.parameters())
    got = torch.autograd.grad(out.loss, params, retain_graph=True)
    want = torch.autograd.grad(ref, params)
    assert abs(out.loss.item() - ref.item()) <= tol * abs(ref.item())
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        assert b.norm() > 0 and rel_err(a, b) < tol, (name, rel_err(a, b))
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert rel_err(flat(got), flat(want)) < tol


def assert_vmap_matches_loop(model, example_shape, tasks=3):
    """functional_call vmapped over per-task parameters equals one call per task."""
    params = {n: p.detach().unsqueeze(0).repeat(tasks, *[1] * p.dim()) + 0.01 * torch.randn(tasks, *p.shape,
                                                                                             dtype=p.dtype)
              for n, p in model.named_parameters()}
    x = torch.randn(tasks, *example_shape, dtype=torch.float64)
    out = torch.func.vmap(lambda p, xt: torch.func.functional_call(model, p, (xt,)))(params, x)
    for t in range(tasks):
        ref = torch.func.functional_call(model, {n: v[t] for n, v in params.items()}, (x[t],))
        torch.testing.assert_close(out[t], ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the real Omniglot archives (../shared)
OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
needs_omniglot = pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"real Omniglot archives not at {OMNIGLOT}")


# ---------------------------------------------------------------- the commands on synthetic Omniglot splits
# (tests/test_cli_worker.py runs `python -m metafast` with these splits in a subprocess)
class SyntheticSplit:
    """Stands in for an Omniglot split: random 8x8 images drawn from the generator, as the real one does."""

    num_classes = 40

    def __init__(self, split: str):
        self.split = split

    def sample(self, tasks, ways, shots, queries, generator=None):
        x = torch.rand(tasks, ways * (shots + queries), 1, 8, 8, generator=generator)
        labels = torch.arange(ways)
        return (x[:, :ways * shots], labels.repeat_interleave(shots).expand(tasks, -1),
                x[:, ways * shots:], labels.repeat_interleave(queries).expand(tasks, -1))


# a tiny `train omniglot` on the synthetic splits: 2-way, 4 channels, 2 tasks, one thread
TINY = ["train", "omniglot", "--data-dir", "synthetic", "--device", "cpu", "--hidden", "4", "--ways", "2",
        "--meta-batch", "2", "--val-every", "1", "--val-tasks", "2", "--test-tasks", "2", "--threads", "1", "--quiet"]


def exit_code_file(folder: str, rank: str) -> Path:
    return Path(folder, f"exit-rank{rank}")


# ---------------------------------------------------------------- tiny few-shot vision sets on disk, in their real formats
# (`classes` classes of `per_class` random images in every split; the loaders need strict=False for them)
def _rgb(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _png_rgb(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_mini_imagenet(root: Path, fmt: str = "pickle", classes: int = 3, per_class: int = 4, side: int = 16,
                        seed: int = 0) -> Path:
    """mini-ImageNet as learn2learn's mini-imagenet-cache-{split}.pkl (84x84 arrays; ``side`` is ignored)
    or as images/ + {split}.csv (PNGs of any ``side``, resized to 84 by the loader)."""
    import pickle

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("train", "val", "test")):
        names = [f"n{s}{c:07d}" for c in range(classes)]
        x = _rgb(rng, classes * per_class, 84 if fmt == "pickle" else side)
        if fmt == "pickle":
            class_dict = {n: list(range(c * per_class, (c + 1) * per_class)) for c, n in enumerate(names)}
            with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
                pickle.dump({"image_data": x, "class_dict": class_dict}, f)
            continue
        (root / "images").mkdir(exist_ok=True)
        rows = []
        for i, img in enumerate(x):
            name = f"{names[i // per_class]}{i:08d}.png"
            (root / "images" / name).write_bytes(_png_rgb(img))
            rows.append(f"{name},{names[i // per_class]}")
        (root / f"{split}.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    return root


def write_tiered_imagenet(root: Path, classes: int = 3, per_class: int = 4, side: int = 16, seed: int = 0) -> Path:
    """tiered-ImageNet as Ren et al.'s {split}_images_png.pkl (PNG bytes, resized to 84 by the loader) and
    {split}_labels.pkl."""
    import pickle

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        labels = np.repeat(np.arange(classes), per_class)
        with open(root / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump([_png_rgb(img) for img in _rgb(rng, len(labels), side)], f)
        with open(root / f"{split}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": labels, "label_general": labels // 2,
                         "label_specific_str": [f"{split}{c}" for c in range(classes)],
                         "label_general_str": [f"g{g}" for g in range(classes // 2 + 1)]}, f)
    return root


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """A tiny cifar-100-python.tar.gz (the official layout) with every CIFAR-FS class, grouped 5 by 5 into
    the 20 FC100 superclasses (any grouping makes a consistent archive): CIFAR-FS and FC100 read it."""
    from metafast.data.cifar import CIFAR_FS_SPLITS, FC100_SPLITS

    rng = np.random.default_rng(seed)
    fine = sorted(n for names in CIFAR_FS_SPLITS.values() for n in names)
    coarse = [c for names in FC100_SPLITS.values() for c in names]
    parts = {"meta": {"fine_label_names": fine, "coarse_label_names": coarse}}
    for part, k in (("train", train_per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(len(fine)), k)
        rng.shuffle(labels)
        parts[part] = {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
                       "fine_labels": labels.tolist(), "coarse_labels": [int(f) % len(coarse) for f in labels],
                       "filenames": [f"img{i}.png" for i in range(len(labels))]}
    root.mkdir(parents=True, exist_ok=True)
    write_cifar_archive(root / "cifar-100-python.tar.gz", parts)
    return root


def write_cifar_archive(path, parts: dict) -> None:
    """The CIFAR-100 python archive layout: one pickle per part under cifar-100-python/."""
    with tarfile.open(path, "w:gz") as tf:
        for name, obj in parts.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def randomize_step_lrs(meta, low: float, high: float) -> None:
    """MAML++'s per-step rates drawn from U(low, high), so that each step's rate matters."""
    if meta.step_lrs is not None:
        with torch.no_grad():
            for r in meta.step_lrs:
                r.uniform_(low, high)
