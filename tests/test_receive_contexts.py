"""The server's presentation contexts, copied per association without copy.deepcopy."""

from __future__ import annotations

import copy

from pacsnode.receive.server import _Contexts, storage_contexts


def test_copy_equals_deepcopy_and_is_independent() -> None:
    contexts = storage_contexts()
    contexts[0].context_id = 1
    contexts[0].scu_role, contexts[0].scp_role = True, False
    fast = copy.deepcopy(_Contexts(contexts))
    slow = copy.deepcopy(list(contexts))
    assert type(fast) is list and len(fast) == len(slow) > 100
    assert all(a == b and a is not c for a, b, c in zip(fast, slow, contexts, strict=True))
    fast[0].add_transfer_syntax("1.2.840.10008.1.2.4.201")  # HTJ2K: not among the node's
    fast[0].context_id = 99
    assert "1.2.840.10008.1.2.4.201" not in contexts[0].transfer_syntax
    assert contexts[0].context_id == 1 and fast[1] == contexts[1]
