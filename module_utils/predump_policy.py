"""When to stop pre-dumping and take the final dump: the stop rule of `checkpoint_strategy=predump`.

A pure function over the figures of the pre-dumps done so far (CRIU's own `stats-dump` of
each iteration and the time its pre-dump and transfer took), called by
`library/predump_loop.py` after every iteration. Standard library only: it runs on the
source node.

`fixed` (the seed's behaviour) always runs `max_iterations` pre-dumps. `adaptive` stops
earlier, at the first of these (checked in this order):

- ``small_dump``: the iteration wrote at most `min_pages` pages - the rest fits in the
  final dump (p.haul `phaul/iters.py`: MIN_ITER_PAGES_COUNT = 64);
- ``skip_goal``: at least `skip_goal_pct` % of the pages CRIU looked at were unchanged
  since the previous pre-dump (skipped from the parent) - that share of memory is in sync
  on the destination (LXD `migration.incremental.memory.goal`, default 70);
- ``not_shrinking``: the dirty set grew by more than `max_growth_pct` % over the previous
  iteration - the workload dirties memory faster than iterations catch up, so more of
  them only add work (p.haul: MAX_ITER_GROW_RATE = 10; 0 stops as soon as it stops
  shrinking);
- ``deadline``: the deadline budget left cannot pay for another iteration and then the
  final dump, its transfer and the restore (estimated from the last iteration, plus
  `final_reserve_s`), so the final dump must start now;
- ``iterations``: `max_iterations` pre-dumps were done (both modes; p.haul MAX_ITERS_COUNT).

With `trigger=notice` (library/predump_loop.py) the deadline clock starts at the spot
notice's issue time and the budget is the notice's length unless `deadline_s` is given;
``notice`` is the stop of `fixed` when the notice comes (and of either mode when its deadline
had already passed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("fixed", "adaptive")
REASONS = ("small_dump", "skip_goal", "not_shrinking", "deadline", "iterations", "notice")


@dataclass(frozen=True)
class PredumpPolicy:
    """The stop rule's settings: the experiment's predump_* settings, which the preflight
    validated (group_vars/all.yml documents each and gives its default)."""

    mode: str  # predump_mode, one of MODES
    max_iterations: int  # predump_iterations
    interval_s: float  # predump_interval: start-to-start spacing of pre-dumps
    min_pages: int  # predump_min_pages
    skip_goal_pct: float  # predump_skip_goal_pct
    max_growth_pct: float  # predump_max_growth_pct
    deadline_s: float  # the budget on the deadline clock; 0: no deadline rule
    final_reserve_s: float  # predump_final_reserve_s

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> PredumpPolicy:
        """The policy of an experiment's settings; the deadline budget is predump_deadline_s,
        else the experiment's own deadline_s (0: none)."""
        return cls(
            mode=str(settings["predump_mode"]),
            max_iterations=int(settings["predump_iterations"]),
            interval_s=float(settings["predump_interval"]),
            min_pages=int(settings["predump_min_pages"]),
            skip_goal_pct=float(settings["predump_skip_goal_pct"]),
            max_growth_pct=float(settings["predump_max_growth_pct"]),
            deadline_s=float(settings["predump_deadline_s"] or settings.get("deadline_s") or 0),
            final_reserve_s=float(settings["predump_final_reserve_s"]),
        )


@dataclass(frozen=True)
class Iteration:
    """What one pre-dump did (CRIU's stats-dump) and cost (pre-dump + its transfer)."""

    index: int
    pages_written: int
    pages_skipped: int = 0  # pages_skipped_parent: unchanged since the previous pre-dump
    predump_s: float = 0.0
    transfer_s: float = 0.0

    @property
    def cost_s(self) -> float:
        return self.predump_s + self.transfer_s

    @property
    def skipped_pct(self) -> float:
        """Share of the pages CRIU looked at that the parent already holds (LXD's measure)."""
        seen = self.pages_written + self.pages_skipped
        return 100.0 * self.pages_skipped / seen if seen else 0.0


@dataclass(frozen=True)
class Decision:
    stop: bool
    reason: str  # one of REASONS when stop, else ""
    detail: str
    figures: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def growth_pct(current: int, previous: int) -> float:
    """How much the dirty set grew from one iteration to the next, in % (p.haul's rate)."""
    if previous <= 0:
        return 0.0 if current <= 0 else float("inf")
    return 100.0 * (current - previous) / previous


def deadline_estimate(policy: PredumpPolicy, last: Iteration) -> tuple[float, float]:
    """(seconds another iteration would take, seconds the final phase would take).

    Another iteration ends no sooner than one interval after the last one started, and
    costs at least what the last one did. The final dump writes about what the last
    iteration wrote (less when the dirty set shrinks), so it is priced at the last
    iteration's pre-dump + transfer, plus the reserve for the restore and orchestration.
    """
    next_iteration_s = max(policy.interval_s, last.cost_s)
    final_s = last.cost_s + policy.final_reserve_s
    return next_iteration_s, final_s


def decide(policy: PredumpPolicy, history: Sequence[Iteration], elapsed_s: float) -> Decision:
    """Whether to stop after the last iteration of `history`.

    `elapsed_s` is the time on the deadline clock when the last iteration ended (since the
    spot notice, or since the first pre-dump began).
    """
    if not history:
        raise ValueError("decide() needs at least one finished pre-dump")
    last = history[-1]
    previous = history[-2] if len(history) > 1 else None
    figures: dict[str, Any] = {
        "iteration": last.index,
        "pages_written": last.pages_written,
        "pages_skipped": last.pages_skipped,
        "skipped_pct": round(last.skipped_pct, 3),
        "elapsed_s": round(elapsed_s, 3),
    }
    if previous is not None:
        figures["growth_pct"] = round(growth_pct(last.pages_written, previous.pages_written), 3)

    def stop(reason: str, detail: str) -> Decision:
        return Decision(True, reason, detail, figures)

    if policy.mode == "adaptive":
        if last.pages_written <= policy.min_pages:
            return stop(
                "small_dump",
                f"pre-dump {last.index} wrote {last.pages_written} pages "
                f"(<= predump_min_pages {policy.min_pages})",
            )
        # The first pre-dump has no parent: nothing can be skipped yet.
        if previous is not None and last.skipped_pct >= policy.skip_goal_pct:
            return stop(
                "skip_goal",
                f"{last.skipped_pct:.1f} % of the pages were unchanged since pre-dump "
                f"{previous.index} (>= predump_skip_goal_pct {policy.skip_goal_pct:g})",
            )
        if previous is not None and figures["growth_pct"] > policy.max_growth_pct:
            return stop(
                "not_shrinking",
                f"pre-dump {last.index} wrote {last.pages_written} pages after "
                f"{previous.pages_written} ({figures['growth_pct']:+.1f} %, more than "
                f"predump_max_growth_pct {policy.max_growth_pct:+g} %)",
            )
        if policy.deadline_s > 0:
            next_s, final_s = deadline_estimate(policy, last)
            figures.update(
                deadline_s=policy.deadline_s,
                next_iteration_estimate_s=round(next_s, 3),
                final_estimate_s=round(final_s, 3),
            )
            if elapsed_s + next_s + final_s > policy.deadline_s:
                left = policy.deadline_s - elapsed_s
                return stop(
                    "deadline",
                    f"{left:.1f} s of the {policy.deadline_s:g} s budget left: not enough for "
                    f"another iteration (~{next_s:.1f} s) and the final phase (~{final_s:.1f} s)",
                )
    if last.index >= policy.max_iterations:
        return stop(
            "iterations", f"{last.index} of predump_iterations={policy.max_iterations} done"
        )
    return Decision(False, "", f"pre-dump {last.index}: continue", figures)
