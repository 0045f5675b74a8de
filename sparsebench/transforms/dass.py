"""DASS as a model transformation: search a sparse architecture and derive it; the run retrains it.

``python -m sparsebench +method=dass`` (which selects ``model=dass`` and ``transform=dass``)
runs, in one run:

1. Search (:meth:`DASS.apply`, before training): the supernet of :mod:`sparsebench.models.dass` on the
   training split, halved: architecture parameters (Adam) on one half's loss plus
   ``cost_weight`` x the softmax-expected cost of the operations (MACs x density: sparse and
   cheap operations cost less), weights and sparse-operation scores (SGD) on the other half
   (first-order DARTS, alternating steps).
2. Derive: the genotype (two edges per node, one operation each, and the classifier kind),
   printed, kept in results.json and logged as ``genotype.json``.
3. Retrain the derived network from scratch through the normal Lightning run; the ``dass`` mask
   policy (sparsebench.sparsity.methods.dass) masks every layer of a sparse operation at that
   operation's sparsity, keeping the weights whose scores the search learnt (top-k, the scores
   handed over as each layer's ``searched_scores``), so the results contract counts the
   searched sparsity.

Mousavi et al., "DASS: Differentiable Architecture Search for Sparse neural networks" (2022);
first-order DARTS from Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019.
With ``genotype`` given, the search is skipped and that network is retrained (masks then come
from the magnitudes of the fresh weights, i.e. random, since no scores were learnt);
``genotype=random`` draws one from the search space with the seed (the random-architecture
baseline a search must beat).
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, random_split

from sparsebench.errors import ConfigError
from sparsebench.models.dass import (
    DerivedNetwork,
    SearchNetwork,
    check_genotype,
    format_genotype,
    random_genotype,
)
from sparsebench.transforms.base import ModelTransform

log = logging.getLogger(__name__)


class DASS(ModelTransform):
    """Mousavi et al. 2022: the supernet search and the derived network (see the module)."""

    resumable = (
        "transform 'dass' searches its architecture before training and cannot continue a "
        "killed run mid-way; start it again."
    )

    def __init__(
        self,
        name: str = "dass",
        channels: int = 8,
        cells: int = 3,
        nodes: int = 3,
        search_epochs: int = 10,
        weight_lr: float = 0.05,
        arch_lr: float = 3e-3,
        arch_weight_decay: float = 1e-3,
        cost_weight: float = 0.2,
        search_resolution: int | None = 16,
        search_batches: int | None = None,
        genotype: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__(name)
        self.seed = seed
        for key, value in (
            ("channels", channels),
            ("cells", cells),
            ("nodes", nodes),
            ("search_epochs", search_epochs),
        ):
            if value is None or int(value) < 1:
                raise ConfigError(f"transform.{key} must be >= 1, got {value}.")
        for key, value in (("weight_lr", weight_lr), ("arch_lr", arch_lr)):
            if value <= 0:
                raise ConfigError(f"transform.{key} must be > 0, got {value}.")
        if cost_weight < 0:
            raise ConfigError(f"transform.cost_weight must be >= 0, got {cost_weight}.")
        self.options = {"channels": channels, "cells": cells, "nodes": nodes}
        self.search_epochs, self.cost_weight = search_epochs, cost_weight
        self.search_resolution = search_resolution
        self.search_batches = search_batches  # per epoch; None: the whole weight half
        self.weight_lr, self.arch_lr, self.arch_weight_decay = weight_lr, arch_lr, arch_weight_decay
        if genotype == "random":  # the random-architecture baseline: a draw from the space
            self.genotype = random_genotype(nodes, seed)
        else:
            self.genotype = check_genotype(genotype, nodes) if genotype is not None else None
        self.scores: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []
        self.search_s = 0.0

    # -- search ---------------------------------------------------------------------------
    def search(self, datamodule) -> None:
        if self.genotype is not None:
            self.description = [
                f"DASS: retraining the given genotype {format_genotype(self.genotype)}"
            ]
            return
        start = time.perf_counter()
        datamodule.setup("fit")
        gen = torch.Generator().manual_seed(self.seed)
        half = len(datamodule.train_set) // 2
        weight_half, arch_half = random_split(
            datamodule.train_set, [half, len(datamodule.train_set) - half], generator=gen
        )
        batch = datamodule.batch_size
        weights_loader = DataLoader(weight_half, batch_size=batch, shuffle=True, generator=gen)
        arch_loader = DataLoader(arch_half, batch_size=batch, shuffle=True, generator=gen)
        torch.manual_seed(self.seed)
        in_chans = int(datamodule.input_shape[0])
        net = SearchNetwork(in_chans, datamodule.num_classes, **self.options)
        w_opt = torch.optim.SGD(
            net.weight_parameters(), lr=self.weight_lr, momentum=0.9, weight_decay=3e-4
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, self.search_epochs)
        a_opt = torch.optim.Adam(
            net.arch_parameters(),
            lr=self.arch_lr,
            betas=(0.5, 0.999),
            weight_decay=self.arch_weight_decay,
        )
        for epoch in range(self.search_epochs):
            net.train()
            correct = seen = 0
            pairs = zip(weights_loader, itertools.cycle(arch_loader))
            for (xw, yw), (xa, ya) in itertools.islice(pairs, self.search_batches):
                xw, xa = self._resize(xw), self._resize(xa)
                a_opt.zero_grad()
                arch_loss = F.cross_entropy(net(xa), ya) + self.cost_weight * net.expected_cost()
                arch_loss.backward()
                a_opt.step()
                w_opt.zero_grad()
                logits = net(xw)
                F.cross_entropy(logits, yw).backward()
                nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
                w_opt.step()
                correct += int((logits.argmax(1) == yw).sum())
                seen += len(yw)
            schedule.step()
            genotype = net.genotype()
            self.history.append(
                {
                    "epoch": epoch,
                    "search/train_acc": correct / seen,
                    "search/cost": float(net.expected_cost().detach()),
                    "genotype": format_genotype(genotype),
                }
            )
            log.info(
                "DASS search epoch %d: train acc %.3f, expected cost %.3f; %s",
                epoch,
                correct / seen,
                float(net.expected_cost().detach()),
                format_genotype(genotype),
            )
        self.genotype = net.genotype()
        self.search_s = time.perf_counter() - start
        derived = DerivedNetwork(in_chans, datamodule.num_classes, self.genotype, **self.options)
        for name, source in derived.search_source().items():
            module = net.get_submodule(source)
            if getattr(module, "sparsity", 0) > 0:
                self.scores[name] = module.scores.detach().clone()
        log.info("DASS derived genotype: %s", format_genotype(self.genotype))
        self.description = [
            f"DASS genotype: {format_genotype(self.genotype)}",
            f"searched {self.search_epochs} epochs at {self.search_resolution or 'full'} px in "
            f"{self.search_s:.0f} s "
            f"(final supernet train acc {self.history[-1]['search/train_acc']:.3f})",
        ]

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """Images are searched at ``search_resolution`` (a proxy: the supernet runs every
        operation on every edge); the derived network trains at full resolution."""
        if self.search_resolution is None or x.dim() != 4 or x.shape[-1] <= self.search_resolution:
            return x
        return F.interpolate(x, size=self.search_resolution, mode="bilinear", align_corners=False)

    def apply(
        self, model: nn.Module, model_cfg: Any, example: torch.Tensor, datamodule: Any = None
    ) -> nn.Module:
        """Search (unless a genotype is given) and build the derived network; the learnt scores
        of its sparse layers go with it (``searched_scores``) for the ``dass`` mask policy."""
        self.search(datamodule)
        derived = DerivedNetwork(
            int(example.shape[1]), int(model_cfg.num_classes), self.genotype, **self.options
        )
        for name, score in self.scores.items():
            derived.get_submodule(name).searched_scores = score
        if not derived.layer_sparsity():
            self.description.append("the genotype has no sparse operation: trained dense")
        return derived

    def extra_results(self) -> dict[str, Any]:
        return {"genotype": self.genotype, "search_history": self.history}

    def extra_metrics(self) -> dict[str, float]:
        return {"time/search_s": self.search_s} if self.search_s else {}
