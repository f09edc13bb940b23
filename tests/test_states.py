"""The worker lifecycle graph: every allowed move works, every other move raises."""

import itertools

import pytest

from tacore.supervision.states import TRANSITIONS, State, TransitionError, check_transition

ALLOWED = sorted(((a, b) for a, targets in TRANSITIONS.items() for b in targets),
                 key=lambda p: (p[0].value, p[1].value))
FORBIDDEN = [(a, b) for a, b in itertools.product(State, State) if b not in TRANSITIONS[a]]


@pytest.mark.parametrize("old,new", ALLOWED, ids=lambda s: str(s))
def test_allowed_transition(old, new):
    """A move in the table is accepted."""
    check_transition(old, new)


@pytest.mark.parametrize("old,new", FORBIDDEN, ids=lambda s: str(s))
def test_forbidden_transition(old, new):
    """A move not in the table raises, naming both states."""
    with pytest.raises(TransitionError, match=f"from {old} to {new}"):
        check_transition(old, new)


def test_graph_is_complete_and_reachable():
    """Every state has an entry, and every state is reachable from STOPPED."""
    assert set(TRANSITIONS) == set(State)
    seen, todo = {State.STOPPED}, [State.STOPPED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(State)


def test_key_rules_of_the_graph():
    """READY only via STARTING (busy is the broker's, not a state); nothing restarts but
    through STARTING; STOPPING ends only in an exit's outcome; FATAL waits for fatal_retry or
    an operator."""
    assert [a for a, targets in TRANSITIONS.items() if State.READY in targets] == [
        State.STARTING]
    assert [a for a, targets in TRANSITIONS.items() if State.STARTING in targets] == [
        State.STOPPED, State.BACKOFF, State.FATAL]
    assert TRANSITIONS[State.STOPPING] == {State.STOPPED, State.BACKOFF, State.FATAL}
    assert TRANSITIONS[State.FATAL] == {State.STARTING, State.STOPPED}
