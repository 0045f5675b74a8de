"""Claim files: a paper's claim, its arms and budgets, fixed before anything runs.

``sweeps/claims/NAME.yaml``::

    version: 1                      # a budget or arm change is a new version, with its reason
    paper: Evci et al. 2020, Rigging the Lottery (ICML)
    claim: ERK layer densities beat uniform ones at high sparsity.
    reference: "ResNet-50 ImageNet at 90%: ERK 73.07 vs uniform 72.02 top-1 (rigl README)"
    metric: test/acc                # default metric of the comparisons
    arms:                           # overrides of `python -m sparsebench`, per arm
      erk: [+method=rigl, method.sparsity=0.95, method.distribution=erk]
      uniform: [+method=rigl, method.sparsity=0.95, method.distribution=uniform]
    comparisons:                    # effect = sum of arms a - sum of arms b, paired by seed
      - {a: erk, b: uniform, direction: greater, delta: 0.005, detect: 0.0105}
      # delta: the smallest effect that counts (the margin); detect: the effect the claim is
      # meant to detect (the report says when n is too small to detect it)
    tiers:
      quick: {seeds: 5, budget: "MLP on MNIST-1D, 10 epochs", overrides: [model=mlp, ...]}
      full: {seeds: 3, budget: "resnet20 on CIFAR-10, 160 epochs", overrides: [...]}
      # a tier may replace arms' overrides (``arms: {dense: [...]}``): a pretrained checkpoint's
      # tier prunes the checkpoint itself instead of a dense arm's run
    changes: []                     # one line per version after the first: what and why

What decides a verdict (arms, metrics, comparisons with their directions, margins and
``detect``, tiers' seeds and overrides) is hashed into the claim's :attr:`Claim.digest`; the
suite refuses a claim whose digest differs from the one recorded for the same version in its
run folder or in the report it rewrites (a changed margin is a new version, with its reason).

An arm's override ``NAME=@ARM`` takes the run folder of arm ARM with the same seed (a
post-training arm pruning the dense arm's checkpoint: ``checkpoint=@dense``). An arm can also be
a search: the best of K candidates by a metric, each candidate another value of one key::

      searched: {best_of: 8, by: val/acc, vary: method.node_seed, overrides: [+method=node]}

(candidate k of seed s sets ``vary`` to s * K + k; every candidate is a run, and the compute of
all of them is counted.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparsebench.config.resources import CLAIMS_DIR
from sparsebench.errors import ConfigError
from sparsebench.reproduce.stats import DIRECTIONS

TIERS = ("quick", "full")
FIELDS = {
    "version",
    "paper",
    "claim",
    "reference",
    "metric",
    "arms",
    "comparisons",
    "tiers",
    "changes",
}


@dataclass(frozen=True)
class Comparison:
    a: tuple[str, ...]
    b: tuple[str, ...]
    direction: str
    delta: float
    metric: str
    label: str
    detect: float  # the effect (A - B, the metric's units) the claim is meant to detect


@dataclass(frozen=True)
class Tier:
    seeds: int
    budget: str
    overrides: tuple[str, ...]
    #: arms whose overrides this tier replaces (a checkpoint's arms: nothing to train first)
    arms: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Search:
    """An arm that is the best of ``k`` candidates by ``by``, candidates differing in ``vary``."""

    k: int
    by: str
    vary: str


@dataclass(frozen=True)
class Job:
    """One run of a claim: an arm at a seed (a search arm's candidate), in its own folder."""

    claim: str
    arm: str
    seed: int
    overrides: tuple[str, ...]
    folder: Path
    candidate: int | None = None


@dataclass(frozen=True)
class Claim:
    name: str
    version: int
    paper: str
    claim: str
    reference: str
    metric: str
    arms: dict[str, tuple[str, ...]]
    comparisons: tuple[Comparison, ...]
    tiers: dict[str, Tier]
    changes: tuple[str, ...]
    path: Path
    searches: dict[str, Search]

    @property
    def digest(self) -> str:
        """A hash of what decides the claim's verdicts (not its prose): arms and searches,
        comparisons (sides, metric, direction, margin, detect), tiers' seeds and overrides."""
        content = {
            "metric": self.metric,
            "arms": self.arms,
            "searches": {k: asdict(v) for k, v in self.searches.items()},
            "comparisons": [asdict(c) for c in self.comparisons],
            "tiers": {
                k: {"seeds": t.seeds, "overrides": t.overrides, "arms": t.arms}
                for k, t in self.tiers.items()
            },
        }
        text = json.dumps(content, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def folder(self, root: Path, tier: str) -> Path:
        return root / tier / self.name

    def arms_of(self, tier: str) -> dict[str, tuple[str, ...]]:
        """The arms' overrides in ``tier``: the file's, with those the tier replaces."""
        return {**self.arms, **self.tiers[tier].arms}

    def jobs(self, root: Path, tier: str, seeds: int | None = None) -> list[Job]:
        """Every (arm, seed) run of ``tier``, arms in file order (an ``@ARM`` reference runs
        after the arm it names), seeds 0..n-1."""
        spec = self.tiers[tier]
        out = []
        for arm, overrides in self.arms_of(tier).items():
            for seed in range(seeds or spec.seeds):
                resolved = []
                for override in overrides:
                    key, _, value = override.partition("=")
                    if value.startswith("@"):
                        value = str(self.folder(root, tier) / f"{value[1:]}-s{seed}")
                    resolved.append(f"{key}={value}")
                base = (*spec.overrides, *resolved, f"seed={seed}")
                search = self.searches.get(arm)
                if search is None:
                    out.append(
                        Job(self.name, arm, seed, base, self.folder(root, tier) / f"{arm}-s{seed}")
                    )
                    continue
                for k in range(search.k):
                    folder = self.folder(root, tier) / f"{arm}-s{seed}-c{k}"
                    out.append(
                        Job(
                            self.name,
                            arm,
                            seed,
                            (*base, f"{search.vary}={seed * search.k + k}"),
                            folder,
                            candidate=k,
                        )
                    )
        return out


def available_claims() -> list[str]:
    return sorted(p.stem for p in CLAIMS_DIR.glob("*.yaml"))


def load_claims(name: str) -> list[Claim]:
    """``all``, a claim's name, or the path of a claim file."""
    if name == "all":
        return [load_claim(n) for n in available_claims()]
    return [load_claim(name)]


def load_claim(name: str) -> Claim:
    """The claim file ``name`` (sweeps/claims/NAME.yaml, or a path), checked: every problem is
    one sentence naming the file and the value."""
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else CLAIMS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown claim '{name}'; available: {', '.join(available_claims())} "
            "(or the path of a claim yaml)."
        )
    where = f"claim file {path}"
    try:
        data = yaml.safe_load(path.read_text())  # safe_load: a claim file never runs code
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of {', '.join(sorted(FIELDS))}.")
    unknown = set(data) - FIELDS
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(FIELDS))}."
        )

    def need(key: str, kind: type, value: Any = None) -> Any:
        value = data.get(key) if value is None else value
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            raise ConfigError(f"{where}: '{key}' must be a {kind.__name__}, got {value!r}.")
        return value

    arms = need("arms", dict)
    if len(arms) < 2:
        raise ConfigError(f"{where}: 'arms' needs two or more arms, got {len(arms)}.")
    checked_arms: dict[str, tuple[str, ...]] = {}
    searches: dict[str, Search] = {}
    for arm, overrides in arms.items():
        if isinstance(overrides, dict):  # a search arm: the best of k candidates
            k, by, vary = overrides.get("best_of"), overrides.get("by"), overrides.get("vary")
            if not (
                isinstance(k, int)
                and k >= 2
                and isinstance(by, str)
                and isinstance(vary, str)
                and set(overrides) <= {"best_of", "by", "vary", "overrides"}
            ):
                raise ConfigError(
                    f"{where}: search arm '{arm}' needs best_of (an integer >= 2), "
                    f"by (a metric), vary (a key) and overrides, got {overrides!r}."
                )
            searches[str(arm)] = Search(k, by, vary)
            overrides = overrides.get("overrides") or []
        if not isinstance(overrides, list) or not all(
            isinstance(o, str) and "=" in o for o in overrides
        ):
            raise ConfigError(
                f"{where}: arm '{arm}' must be a list of KEY=VALUE overrides, got {overrides!r}."
            )
        for override in overrides:
            ref = override.partition("=")[2]
            if ref.startswith("@") and (ref[1:] not in checked_arms or ref[1:] in searches):
                raise ConfigError(
                    f"{where}: arm '{arm}' refers to '{ref}', which must be an arm "
                    f"listed before it and not a search "
                    f"({', '.join(checked_arms) or 'none'})."
                )
        checked_arms[str(arm)] = tuple(overrides)
    metric = need("metric", str)
    comparisons = []
    for i, item in enumerate(need("comparisons", list)):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: comparison {i + 1} must be a mapping, got {item!r}.")
        sides = []
        for side in ("a", "b"):
            names = item.get(side)
            names = [names] if isinstance(names, str) else names
            if not names or any(n not in checked_arms for n in names):
                raise ConfigError(
                    f"{where}: comparison {i + 1}: '{side}' must name arms of "
                    f"{', '.join(checked_arms)}, got {item.get(side)!r}."
                )
            sides.append(tuple(names))
        direction = item.get("direction")
        if direction not in DIRECTIONS:
            raise ConfigError(
                f"{where}: comparison {i + 1}: direction must be one of "
                f"{', '.join(DIRECTIONS)}, got {direction!r}."
            )
        delta = item.get("delta")
        if not isinstance(delta, (int, float)) or isinstance(delta, bool) or delta < 0:
            raise ConfigError(
                f"{where}: comparison {i + 1}: delta (the smallest effect that "
                f"counts) must be a number >= 0, got {delta!r}."
            )
        detect = item.get("detect")
        if not isinstance(detect, (int, float)) or isinstance(detect, bool):
            raise ConfigError(
                f"{where}: comparison {i + 1}: detect (the effect A - B the claim is meant to "
                f"detect, for the report's power column) must be a number, got {detect!r}."
            )
        label = item.get("label") or f"{' + '.join(sides[0])} vs {' + '.join(sides[1])}"
        comparisons.append(
            Comparison(
                sides[0],
                sides[1],
                direction,
                float(delta),
                str(item.get("metric") or metric),
                str(label),
                float(detect),
            )
        )
    if not comparisons:
        raise ConfigError(f"{where}: 'comparisons' needs at least one comparison.")
    tiers = {}
    for tier, spec in need("tiers", dict).items():
        if tier not in TIERS or not isinstance(spec, dict):
            raise ConfigError(f"{where}: tiers are {', '.join(TIERS)} (mappings), got {tier!r}.")
        seeds = spec.get("seeds")
        if not isinstance(seeds, int) or seeds < 2:
            raise ConfigError(
                f"{where}: tier {tier}: seeds must be an integer >= 2, got {seeds!r}."
            )
        overrides = spec.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"{where}: tier {tier}: overrides must be a list of KEY=VALUE.")
        replaced = spec.get("arms") or {}
        if not isinstance(replaced, dict) or not set(replaced) <= set(checked_arms) - set(searches):
            raise ConfigError(
                f"{where}: tier {tier}: arms must map arms of the file "
                f"({', '.join(checked_arms)}; not searches) to overrides, got {replaced!r}."
            )
        tier_arms = {}
        for arm, arm_overrides in replaced.items():
            if not isinstance(arm_overrides, list) or not all(
                isinstance(o, str) and "=" in o and not o.partition("=")[2].startswith("@")
                for o in arm_overrides
            ):
                raise ConfigError(
                    f"{where}: tier {tier}: arm '{arm}' must be a list of KEY=VALUE overrides "
                    f"without @ARM references, got {arm_overrides!r}."
                )
            tier_arms[str(arm)] = tuple(arm_overrides)
        tiers[tier] = Tier(seeds, str(spec.get("budget") or ""), tuple(overrides), tier_arms)
    if "quick" not in tiers:
        raise ConfigError(f"{where}: a quick tier is required.")
    version = need("version", int)
    changes = tuple(data.get("changes") or ())
    if len(changes) != version - 1:
        raise ConfigError(
            f"{where}: version {version} needs {version - 1} line(s) under "
            f"'changes' (what changed and why), got {len(changes)}."
        )
    return Claim(
        name=path.stem,
        version=version,
        paper=need("paper", str),
        claim=need("claim", str),
        reference=need("reference", str),
        metric=metric,
        arms=checked_arms,
        comparisons=tuple(comparisons),
        tiers=tiers,
        changes=changes,
        path=path,
        searches=searches,
    )
