"""STOW-RS: results to a DICOMweb destination (dicomweb-client), and its probe.

One POST per call with every dataset as a part of one multipart/related request. Basic
auth (``username`` + the first line of ``password_file``) or a bearer token (the first line
of ``token_file``); ``tls_ca`` verifies an https server. The answer (PS3.18 §10.5.3) is read
per instance: ReferencedSOPSequence → stored (warnings included), FailedSOPSequence → its
FailureReason. A connection that fails, times out or gets 502/503/504 is
:class:`~pacsnode.errors.DeliveryError` with ``unreachable`` set (the destination goes down
and is probed); any other HTTP error (401, 403, 400, 409 ...) is a refusal from a peer
that answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from pacsnode.config import Destination
from pacsnode.delivery.scu import StoreOutcome, _unreachable
from pacsnode.errors import DeliveryError

__all__ = ["send_stow", "probe_stow"]

log = logging.getLogger(__name__)

_UNAVAILABLE = {502, 503, 504}


def _secret(path: Path | None, what: str) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise DeliveryError(f"{what} must be a readable file with the secret on its first line, "
                            f"got {path}: {exc}") from None


def _session(d: Destination) -> requests.Session:
    session = requests.Session()
    if d.token_file is not None:
        session.headers["Authorization"] = f"Bearer {_secret(d.token_file, 'token_file')}"
    elif d.username:
        session.auth = (d.username, _secret(d.password_file, "password_file"))
    if d.tls_ca is not None:
        session.verify = str(d.tls_ca)
    return session


def _client(d: Destination, timeout: float) -> DICOMwebClient:
    client = DICOMwebClient(url=d.url.rstrip("/"), session=_session(d))
    client._timeout = timeout  # dicomweb-client has no constructor argument for it
    client.set_http_retry_params(retry=False)  # the outbox's policy retries, not five quick tries here
    return client


def _outcomes(answer: pydicom.Dataset, sent: list[pydicom.Dataset]) -> list[StoreOutcome]:
    refused = {str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0x0110))
               for i in answer.get("FailedSOPSequence", [])}
    return [StoreOutcome(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                         refused.get(str(ds.SOPInstanceUID), 0x0000)) for ds in sent]


def send_stow(destination: Destination, paths: Iterable[str | Path], *, timeout: float = 30.0) -> list[StoreOutcome]:
    """STOW-RS every file to ``destination``; one :class:`StoreOutcome` per file, in order, when
    every one was stored. Raises :class:`DeliveryError` otherwise (``exc.outcomes`` holds
    the per-instance answers, ``exc.unreachable`` whether the destination is down)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    if not datasets:
        return []
    where = f"STOW-RS to {destination.url}"
    try:
        answer = _client(destination, timeout).store_instances(datasets)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in _UNAVAILABLE:
            raise _unreachable(f"{where} needs the service, got HTTP {code}") from None
        err = DeliveryError(f"{where} must be accepted, got HTTP {code}"
                            f"{' (check username/password_file or token_file)' if code in (401, 403) else ''}")
        body = exc.response.content if exc.response is not None else b""
        try:
            err.outcomes = _outcomes(pydicom.Dataset.from_json(body), datasets)  # type: ignore[attr-defined]
        except Exception:
            err.outcomes = []  # type: ignore[attr-defined]
        raise err from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _unreachable(f"{where} needs a connection, got {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]}") from None
    outcomes = _outcomes(answer, datasets)
    failed = [o for o in outcomes if not o.stored]
    if failed:
        err = DeliveryError(f"{where} must store every instance, {len(failed)} of {len(outcomes)} refused: "
                            + "; ".join(f"{o.sop_instance_uid} 0x{o.status:04X}" for o in failed))
        err.outcomes = outcomes  # type: ignore[attr-defined]
        raise err
    log.info("STOW-RS of %d instances to %s: stored", len(outcomes), destination.url)
    return outcomes


def probe_stow(destination: Destination, *, timeout: float = 30.0) -> int:
    """A QIDO-RS search for one study: the service answers (its HTTP status, which may be
    401 for bad credentials: the STOW-RS will say so). Raises :class:`DeliveryError`
    (``unreachable``) when it does not answer or answers 502/503/504."""
    url = destination.url.rstrip("/") + "/studies?limit=1"
    try:
        r = _session(destination).get(url, timeout=timeout, headers={"Accept": "application/dicom+json"})
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _unreachable(f"QIDO-RS to {destination.url} needs a connection, got {type(exc).__name__}") from None
    if r.status_code in _UNAVAILABLE:
        raise _unreachable(f"QIDO-RS to {destination.url} needs the service, got HTTP {r.status_code}")
    return r.status_code
