"""Replays every saved case in tests/regressions/linearizer/*.json.

Each case is a recorded operation trace of the simulated network (see
``autobase_py.testing.dag.replay``). Cases come from failures hypothesis or the seeded random
walks found (including runs against deliberately broken linearizers, which these cases must
keep catching). After every operation: fast == reference on every peer and safety across
peers; at the end: heal, deliver, ack waves, every value confirmed everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autobase_py.testing.dag import SimNetwork, membership, replay
from autobase_py.testing.reference_linearizer import ReferenceLinearizer

CASES = sorted((Path(__file__).resolve().parents[1] / "regressions" / "linearizer").glob("*.json"))


def check_against_reference(net: SimNetwork) -> None:
    net.check_safety()
    for peer in net.peers.values():
        ref = ReferenceLinearizer(net.genesis, membership)
        for node in peer.added:
            ref.add(node)
        order, confirmed, indexers = ref.compute()
        assert peer.lin.confirmed_length == confirmed
        assert peer.lin.indexers == indexers
        assert peer.confirmed == order[:confirmed]
        assert peer.lin.tip() == order[confirmed:]


def test_there_are_saved_cases() -> None:
    assert CASES


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_saved_case(path: Path) -> None:
    case = json.loads(path.read_text())
    net = replay(case, check=check_against_reference)
    net.heal()
    net.deliver_all()
    net.sync_all()
    for _ in range(3 * 8):
        if not any(net.peers[w].lin.should_ack(w) for w in net.writers):
            break
        net.ack_wave()
    for w in net.writers:
        assert not net.unconfirmed_values(w)
    check_against_reference(net)
