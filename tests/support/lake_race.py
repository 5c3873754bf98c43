"""Two lake writers racing on one commit: the second commits between the first's key read and its append."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from gpuledger import wire
from gpuledger.store.lake import LakeStore


def race_on_devices(first: LakeStore, second: LakeStore, msgs: Sequence[wire.Message]) -> None:
    """Make ``first``'s next write lose its ``devices`` commit: right after it reads which keys that table holds,
    ``second`` stores ``msgs`` (every table), so ``first`` appends on top of keys it has not seen."""
    real = first._existing
    raced: list[bool] = []

    def existing_then_race(table: object, scope: object) -> pa.Table:
        keys = real(table, scope)  # type: ignore[arg-type]
        if not raced and table.name()[-1] == "devices":  # type: ignore[attr-defined]
            raced.append(True)
            assert second.write_messages(msgs) == len(msgs)  # commits while `first` holds old keys
        return keys

    first._existing = existing_then_race  # type: ignore[method-assign]
