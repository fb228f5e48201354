"""Few-shot episodes drawn on the device, vectorised over tasks.

Shared by every image data set of ``metafast.data``: the :class:`Episode`
tuple, the argument checks, the draw of classes and images per task (no
per-task Python loop, reproducible from a ``torch.Generator``) and
:class:`EpisodeSampler`.  A data set provides ``num_classes``,
``images_per_class`` (the smallest class size), ``split`` and
``sample(tasks, ways, shots, queries, generator, device)``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Episode", "EpisodeSampler", "check_episode", "draw_episode_indices"]


class Episode(NamedTuple):
    """A batch of few-shot tasks; the first dimension is the task."""

    support_x: torch.Tensor  # [T, N*K, C, H, W] float32
    support_y: torch.Tensor  # [T, N*K] int64 in 0..N-1
    query_x: torch.Tensor  # [T, N*Q, C, H, W]
    query_y: torch.Tensor  # [T, N*Q]


def check_episode(ds, ways: int, shots: int, queries: int, tasks: int = 1) -> None:
    """Raise ValueError unless ``ds`` can give ``tasks`` ``ways``-way ``shots``+``queries`` tasks."""
    if tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {tasks}")
    if ways < 2:
        raise ValueError(f"ways must be >= 2, got {ways}")
    if ways > ds.num_classes:
        raise ValueError(f"ways={ways} exceeds the {ds.num_classes} classes of split {ds.split!r}")
    if shots < 1 or queries < 1:
        raise ValueError(f"shots and queries must be >= 1, got shots={shots}, queries={queries}")
    if shots + queries > ds.images_per_class:
        item = getattr(ds, "item_name", "images")
        raise ValueError(
            f"shots + queries = {shots + queries} exceeds the {ds.images_per_class} {item} per class "
            f"(in the smallest class) of split {ds.split!r}"
        )


def episode_labels(tasks: int, ways: int, shots: int, queries: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query labels ``[T, N*K]``, ``[T, N*Q]``: 0..N-1, class by class."""
    labels = torch.arange(ways, device=device)
    support_y = labels.repeat_interleave(shots).expand(tasks, -1).contiguous()
    query_y = labels.repeat_interleave(queries).expand(tasks, -1).contiguous()
    return support_y, query_y


def draw_episode_indices(
    tasks: int,
    ways: int,
    n: int,
    counts: torch.Tensor | int,
    num_classes: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes ``[T, N]`` (distinct per task) and items ``[T, N, n]`` (distinct per class).

    ``counts``: the number of images of each class (an int when all classes
    have as many); item indices are within the class, below its count.  The
    draws are made on the generator's device (else ``device``) and moved to
    ``device``.
    """
    gdev = generator.device if generator is not None else device
    # Classes: a random subset of size `ways` per task (top-k of uniform noise).
    cls = torch.rand(tasks, num_classes, generator=generator, device=gdev).topk(ways, dim=1).indices
    if isinstance(counts, int):
        noise = torch.rand(tasks, ways, counts, generator=generator, device=gdev)
    else:
        counts = counts.to(gdev)
        noise = torch.rand(tasks, ways, int(counts.max()), generator=generator, device=gdev)
        # items beyond a class's count sort last (noise is < 1)
        beyond = torch.arange(noise.shape[-1], device=gdev) >= counts[cls][..., None]
        noise = noise.masked_fill(beyond, 2.0)
    items = noise.argsort(dim=-1)[..., :n]
    return cls.to(device), items.to(device)


class EpisodeSampler:
    """Fixed N-way K-shot Q-query episodes from a data set, on one device.

    ``EpisodeSampler(ds, 5, 1, device="cuda").sample(32, generator)`` is
    ``ds.sample(32, 5, 1, 1, generator, "cuda")``.  Iterating yields batches of
    ``tasks_per_batch`` tasks forever from the sampler's own generator.
    """

    def __init__(
        self,
        dataset,
        ways: int,
        shots: int,
        queries: int | None = None,
        device: str | torch.device | None = None,
        tasks_per_batch: int = 32,
        seed: int | None = None,
    ):
        self.dataset = dataset
        self.ways, self.shots = ways, shots
        self.queries = shots if queries is None else queries
        check_episode(dataset, ways, shots, self.queries)
        if device is not None:
            dataset.to(device)
        self.tasks_per_batch = tasks_per_batch
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def sample(self, tasks: int | None = None, generator: torch.Generator | None = None) -> Episode:
        return self.dataset.sample(
            self.tasks_per_batch if tasks is None else tasks,
            self.ways, self.shots, self.queries,
            generator=self.generator if generator is None else generator,
        )

    def __iter__(self):
        while True:
            yield self.sample()
