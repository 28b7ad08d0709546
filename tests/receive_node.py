"""An in-process receive stage for tests: StorageSCP + Receiver + spool + ledger."""

from __future__ import annotations

from pathlib import Path

from conftest import free_port

from pacsnode.config import parse_settings
from pacsnode.ledger import Ledger
from pacsnode.receive import Receiver, StorageSCP
from pacsnode.receive.spool import Spool


class ReceiveNode:
    """A StorageSCP with its Receiver, spool (journal on) and ledger, in this process."""

    def __init__(self, tmp: Path, *, fast: bool, max_pdu: int = 262144, min_free_disk_mb: float = 0,
                 callers: tuple[str, ...] = ("127.0.0.0/8",), **node: object) -> None:
        self.port = free_port()
        self.settings = parse_settings({
            "node": {"port": self.port, "state_dir": str(tmp / "state"), "max_pdu": max_pdu,
                     "min_free_disk_mb": 0, "fast_data_phase": fast, **node},
            "security": {"allowed_callers": [{"ae_title": "SCU", "hosts": list(callers)}]},
        })
        self.spool = Spool(tmp / "state", journal=True, min_free_mb=min_free_disk_mb)
        self.spool.open()
        self.ledger = Ledger(tmp / "state" / "ledger.sqlite")
        self.recorded: list[str] = []
        self.receiver = Receiver(self.spool, self.ledger, unit_of=lambda st, se: (se, "series"),
                                 on_recorded=lambda o: self.recorded.append(o.unit_uid),
                                 min_free_disk_mb=min_free_disk_mb, fast_data_phase=fast)
        self.scp = StorageSCP(self.settings, self.receiver)
        self.scp.start()

    def close(self) -> None:
        self.scp.stop(grace=5)
        self.spool.close()
        self.ledger.close()
