"""The flow worker's admission policy: FIFO within a token and memory budget, backfill, aging."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from diptych.engine.flow_budget import BatchBudget, default_budget, default_share, select
from diptych.models.base import FlowCost


@dataclass
class Entry:
    cost: FlowCost
    overtaken: int = 0


def entries(*tokens: int, memory: int = 1) -> list[Entry]:
    return [Entry(FlowCost(t, memory)) for t in tokens]


def test_admits_in_arrival_order_while_the_batch_fits() -> None:
    budget = BatchBudget(max_tokens=100)
    assert select(entries(30, 30, 30, 30), [], budget) == [0, 1, 2]
    assert select(entries(30, 30), [FlowCost(50, 1)], budget) == [0]
    assert select(entries(30), [FlowCost(90, 1)], budget) == []


def test_memory_and_request_count_limit_as_tokens_do() -> None:
    assert select(entries(1, 1, 1, memory=40), [], BatchBudget(max_memory_bytes=100)) == [0, 1]
    assert select(entries(1, 1, 1), [FlowCost(1, 1)], BatchBudget(max_requests=3)) == [0, 1]


def test_later_requests_backfill_past_one_that_does_not_fit_and_count_as_overtaking() -> None:
    waiting = entries(80, 10, 10)
    assert select(waiting, [FlowCost(50, 1)], BatchBudget(max_tokens=100)) == [1, 2]
    assert [e.overtaken for e in waiting] == [1, 0, 0]


def test_an_aged_request_blocks_everything_behind_it_until_it_fits() -> None:
    budget = BatchBudget(max_tokens=100, max_overtakes=2)
    waiting = entries(80, 10, 10)
    waiting[0].overtaken = 2
    assert select(waiting, [FlowCost(50, 1)], budget) == []
    assert select(waiting, [], budget) == [0, 1, 2]  # the batch drained: it goes first


def test_an_oversized_request_is_admitted_alone_into_an_empty_batch() -> None:
    budget = BatchBudget(max_tokens=100)
    assert select(entries(500, 10), [], budget) == [0]
    assert select(entries(500, 10), [FlowCost(10, 1)], budget) == [1]


def test_budget_values_are_checked() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        BatchBudget(max_tokens=0)
    with pytest.raises(ValueError, match="max_overtakes"):
        BatchBudget(max_overtakes=-1)


def test_default_cpu_budget_is_a_share_of_available_host_memory() -> None:
    budget = default_budget("cpu")
    assert 0 < budget.max_memory_bytes < 64 << 30
    assert budget.max_tokens == BatchBudget().max_tokens


def test_a_given_memory_budget_is_taken_as_it_is() -> None:
    # Setting flow_memory_gib, or the memory plan's share on a GPU: the device is not asked.
    assert default_budget("cuda", 1.5).max_memory_bytes == 3 << 29
    assert default_share("cuda", 10) == 5 and default_share("cpu", 10) == 2 and default_share("cuda", -3) == 0
