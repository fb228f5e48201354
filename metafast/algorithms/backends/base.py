"""The interface every BatchedMAML backend implements.

A backend adapts a meta-batch's tasks and runs the query set; BatchedMAML
validates the inputs first and chooses the backend (``unavailable`` says why a
backend cannot serve a call). Adding a backend: one class here beside the
others, registered in ``backends/__init__.py``; BatchedMAML needs no edit.
"""
from __future__ import annotations

import torch


class Backend:
    name = ""

    def unavailable(self, meta, support_x: torch.Tensor, steps: int) -> str | None:
        """Why this backend cannot serve the call exactly (None: it can)."""
        return None

    def adapt(self, meta, support_x, support_y, steps: int, weights=None):
        """({name: [T, *shape]} adapted parameters, support losses [T, steps])."""
        raise NotImplementedError

    def predict(self, meta, params: dict, x: torch.Tensor) -> torch.Tensor:
        """The model on x [T, N, ...] with per-task parameters (the others fixed)."""
        raise NotImplementedError

    def run(self, meta, support_x, support_y, query_x, query_y, weights=None):
        """(support losses [T, steps], query output [T, Q, ...], mean query loss)."""
        params, support_losses = self.adapt(meta, support_x, support_y, meta.inner_steps, weights)
        query_output = self.predict(meta, params, query_x)
        return support_losses, query_output, meta.mean_query_loss(query_output, query_y)
