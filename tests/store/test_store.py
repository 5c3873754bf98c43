"""The store's write path: idempotent, and pods keep the latest labels seen."""

from __future__ import annotations

import json

from gpuledger.store import Store
from tests.support.factories import make_message


def test_a_replayed_older_message_does_not_overwrite_newer_pod_labels() -> None:
    store = Store()
    assert store.write_messages([make_message(seq=5, namespace="team-new")]) == 1
    # An agent's spool replays an older tick later: same pod uid, older labels.
    assert store.write_messages([make_message(seq=1, namespace="team-old")]) == 1
    pods = store.query("SELECT namespace, labels FROM pods WHERE pod_uid = 'pod-uid-0'")
    assert pods["namespace"].to_list() == ["team-new"]
    assert json.loads(pods["labels"][0]) == {"team": "team-new"}


def test_the_same_message_twice_is_stored_once_with_its_rows() -> None:
    store = Store()
    msg = make_message(seq=3)
    assert store.write_messages([msg, msg]) == 1
    assert store.write_messages([msg]) == 0
    assert store.count("messages") == 1
    assert store.count("devices") == len(msg.devices)
    assert store.count("processes") == len(msg.processes)

