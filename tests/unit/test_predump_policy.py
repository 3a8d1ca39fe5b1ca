"""The pre-dump stop rule (module_utils/predump_policy.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from experiment_plan import load_setting_defaults, plan_settings
from predump_policy import (
    REASONS,
    Iteration,
    PredumpPolicy,
    deadline_estimate,
    decide,
    growth_pct,
)

# The suite's defaults (group_vars/all.yml), as the preflight hands them over.
DEFAULTS = load_setting_defaults()
SEED = PredumpPolicy.from_settings(DEFAULTS)


def policy_of(**overrides: Any) -> PredumpPolicy:
    """The seed's policy with some fields changed."""
    return replace(SEED, **overrides)


# Figures of the guest lab's first runs (docs/lab.md): 64 MiB, three pre-dumps.
FIRST = Iteration(1, pages_written=17062, pages_skipped=0, predump_s=0.49, transfer_s=2.0)
SECOND = Iteration(2, pages_written=1582, pages_skipped=15480, predump_s=0.18, transfer_s=0.6)
THIRD_FLAT = Iteration(3, pages_written=1582, pages_skipped=15480, predump_s=0.19, transfer_s=0.6)

ADAPTIVE = policy_of(mode="adaptive", max_iterations=8, interval_s=1.0, skip_goal_pct=100.0)


def test_fixed_runs_every_iteration_whatever_the_figures() -> None:
    policy = policy_of(mode="fixed", max_iterations=3)
    # even a tiny, non-shrinking dirty set does not stop the seed's fixed mode
    tiny = [Iteration(1, 10), Iteration(2, 50, 0)]
    assert decide(policy, tiny[:1], 1.0).stop is False
    assert decide(policy, tiny, 2.0).stop is False
    last = decide(policy, [*tiny, Iteration(3, 10)], 3.0)
    assert (last.stop, last.reason) == (True, "iterations")
    assert "3 of predump_iterations=3" in last.detail


def test_fixed_ignores_the_deadline() -> None:
    policy = policy_of(mode="fixed", max_iterations=4, deadline_s=1.0)
    assert decide(policy, [FIRST], 100.0).stop is False


def test_adaptive_keeps_going_while_the_dirty_set_shrinks() -> None:
    decision = decide(ADAPTIVE, [FIRST], 2.5)
    assert decision.stop is False and decision.reason == ""
    assert decision.figures["pages_written"] == 17062


def test_small_dump_stops_even_the_first_iteration() -> None:
    decision = decide(ADAPTIVE, [Iteration(1, pages_written=40)], 0.3)
    assert (decision.stop, decision.reason) == (True, "small_dump")
    assert "40 pages" in decision.detail and "64" in decision.detail


def test_min_pages_is_inclusive() -> None:
    policy = policy_of(mode="adaptive", min_pages=100)
    assert decide(policy, [Iteration(1, 100)], 0.1).reason == "small_dump"
    assert decide(policy, [Iteration(1, 101)], 0.1).stop is False


def test_skip_goal_as_lxd_counts_it() -> None:
    policy = policy_of(mode="adaptive", skip_goal_pct=70.0)
    decision = decide(policy, [FIRST, SECOND], 4.0)
    # 15480 of 17062 pages unchanged: 90.7 %
    assert (decision.stop, decision.reason) == (True, "skip_goal")
    assert decision.figures["skipped_pct"] == pytest.approx(90.728, abs=0.001)


def test_skip_goal_never_applies_to_the_first_pre_dump() -> None:
    # no parent yet: a first pre-dump skips nothing; the goal must not be judged on it
    policy = policy_of(mode="adaptive", skip_goal_pct=0.0)
    assert decide(policy, [FIRST], 1.0).stop is False


def test_skip_goal_below_the_goal_continues() -> None:
    policy = policy_of(mode="adaptive", skip_goal_pct=95.0)
    assert decide(policy, [FIRST, SECOND], 4.0).stop is False


def test_growing_dirty_set_stops_like_p_haul() -> None:
    grown = Iteration(3, pages_written=1800, pages_skipped=15262)  # +13.8 % over SECOND
    decision = decide(ADAPTIVE, [FIRST, SECOND, grown], 6.0)
    assert (decision.stop, decision.reason) == (True, "not_shrinking")
    assert decision.figures["growth_pct"] == pytest.approx(13.780, abs=0.001)


def test_growth_within_the_rate_continues() -> None:
    slightly = Iteration(3, pages_written=1700, pages_skipped=15362)  # +7.5 %
    assert decide(ADAPTIVE, [FIRST, SECOND, slightly], 6.0).stop is False


def test_zero_growth_rate_stops_when_the_set_stops_shrinking() -> None:
    policy = policy_of(mode="adaptive", max_growth_pct=0.0, skip_goal_pct=100.0)
    assert decide(policy, [FIRST, SECOND], 4.0).stop is False  # still shrinking
    flat = decide(policy, [FIRST, SECOND, Iteration(3, 1583, 15479)], 6.0)
    assert flat.reason == "not_shrinking"
    # exactly the same size is not growth
    assert decide(policy, [FIRST, SECOND, THIRD_FLAT], 6.0).stop is False


def test_deadline_stops_when_another_iteration_would_not_leave_room() -> None:
    policy = policy_of(
        mode="adaptive", interval_s=10.0, deadline_s=30.0, final_reserve_s=5.0, skip_goal_pct=100
    )
    # elapsed 12 s + next iteration 10 s + final (0.78 + 5) s = 27.8 s: fits
    assert decide(policy, [FIRST, SECOND], 12.0).stop is False
    # at 15 s: 15 + 10 + 5.78 = 30.8 s > 30 s: the final dump must start now
    decision = decide(policy, [FIRST, SECOND], 15.0)
    assert (decision.stop, decision.reason) == (True, "deadline")
    assert decision.figures["next_iteration_estimate_s"] == 10.0
    assert decision.figures["final_estimate_s"] == pytest.approx(5.78)
    assert "15.0 s of the 30 s budget left" in decision.detail


def test_deadline_estimates_use_the_slower_of_interval_and_last_cost() -> None:
    policy = policy_of(mode="adaptive", interval_s=1.0, final_reserve_s=2.0)
    slow = Iteration(2, 5000, 12000, predump_s=1.5, transfer_s=3.5)
    assert deadline_estimate(policy, slow) == (5.0, 7.0)
    assert deadline_estimate(policy, SECOND)[0] == 1.0


def test_no_deadline_rule_without_a_budget() -> None:
    policy = policy_of(mode="adaptive", deadline_s=0.0, skip_goal_pct=100)
    assert decide(policy, [FIRST], 10_000.0).stop is False


def test_convergence_rules_win_over_the_deadline() -> None:
    # both apply: the reason names the workload's behaviour, checked first
    policy = policy_of(mode="adaptive", deadline_s=1.0)
    assert decide(policy, [FIRST, SECOND], 50.0).reason == "skip_goal"


def test_adaptive_stops_at_the_cap() -> None:
    policy = policy_of(mode="adaptive", max_iterations=2, skip_goal_pct=100)
    decision = decide(policy, [FIRST, SECOND], 3.0)
    assert (decision.stop, decision.reason) == (True, "iterations")


def test_every_reason_is_documented() -> None:
    # notice: library/predump_loop.py's stop when a spot notice ends the pre-dumps
    assert set(REASONS) == {
        "small_dump", "skip_goal", "not_shrinking", "deadline", "iterations", "notice"
    }  # fmt: skip


def test_growth_pct() -> None:
    assert growth_pct(110, 100) == 10.0
    assert growth_pct(50, 100) == -50.0
    assert growth_pct(0, 0) == 0.0
    assert growth_pct(5, 0) == float("inf")


def test_iteration_shares_and_costs() -> None:
    assert SECOND.skipped_pct == pytest.approx(100 * 15480 / 17062)
    assert Iteration(1, 0, 0).skipped_pct == 0.0
    assert SECOND.cost_s == pytest.approx(0.78)


def test_the_seed_policy_comes_from_the_settings() -> None:
    assert PredumpPolicy(
        mode="fixed", max_iterations=8, interval_s=10.0, min_pages=64, skip_goal_pct=70.0,
        max_growth_pct=10.0, deadline_s=0.0, final_reserve_s=5.0,
    ) == SEED  # fmt: skip
    # no pre-dump deadline of its own: the experiment's deadline_s is the budget
    assert PredumpPolicy.from_settings({**DEFAULTS, "deadline_s": 30}).deadline_s == 30.0
    both = {**DEFAULTS, "deadline_s": 30, "predump_deadline_s": 20}
    assert PredumpPolicy.from_settings(both).deadline_s == 20.0


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"predump_mode": "smart"}, "predump_mode='smart' is not one of: fixed, adaptive"),
        ({"predump_iterations": 0}, "predump_iterations=0 is below the minimum 1"),
        (
            {"predump_skip_goal_pct": 120},
            "predump_skip_goal_pct=120.0 % is above the maximum 100.0 %",
        ),
        ({"predump_interval": -1}, "predump_interval=-1.0 s is below the minimum 0.0 s"),
    ],
)
def test_bad_settings_are_refused_by_the_preflight(variables: dict, message: str) -> None:
    # the policy trusts its settings: their ranges are the preflight's (experiment_plan)
    _settings, errors = plan_settings(variables, DEFAULTS)
    assert errors == [message]


def test_decide_needs_history() -> None:
    with pytest.raises(ValueError, match="at least one"):
        decide(ADAPTIVE, [], 0.0)


def test_decision_as_dict_is_json_ready() -> None:
    import json

    decision = decide(ADAPTIVE, [FIRST, SECOND], 4.0)
    data = json.loads(json.dumps(decision.as_dict()))
    assert data["stop"] is False
    assert data["figures"]["growth_pct"] == pytest.approx(-90.728, abs=0.001)
