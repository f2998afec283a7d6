"""Named fault-injection points for the reliability tests (kill anywhere, disk full).

Long jobs (training, ``leader embed``, ``leader data index``, ``leader data shard``) call
:func:`point` at the places where a crash is most harmful: between writing a file and
renaming it, between two renames, after a shard and before the index. In normal runs the
call costs one environment lookup. When the environment variable ``LEADER_FAULT`` is set,
the named point acts at its *n*-th hit in this process::

    LEADER_FAULT="ckpt.after_model:2:kill"         # SIGKILL at the 2nd hit
    LEADER_FAULT="train.after_step:5:kill,store.after_shard:1:enospc"

Actions:
    ``kill``    ``SIGKILL`` to the own process (nothing is flushed, no ``finally`` runs);
    ``enospc``  raise ``OSError(ENOSPC)`` as a full disk would;
    ``erofs``   raise ``OSError(EROFS)`` as a read-only filesystem would;
    ``raise``   raise :class:`InjectedFault` (a ``RuntimeError``).

The tests in ``tests/test_faults_*.py`` run a job in a subprocess with a fault, rerun it
without, and compare with an uninterrupted run (``docs/RELIABILITY.md``).
"""

from __future__ import annotations

import errno
import os
import signal
import threading

__all__ = ["ENV", "InjectedFault", "point", "parse_spec", "reset"]

ENV = "LEADER_FAULT"
_ACTIONS = ("kill", "enospc", "erofs", "raise")
_hits: dict[str, int] = {}
_lock = threading.Lock()


class InjectedFault(RuntimeError):
    """Raised by a fault point with the ``raise`` action."""


def parse_spec(spec: str) -> dict[str, tuple[int, str]]:
    """Parse ``"name:n:action,name2:n2:action2"`` into ``{name: (n, action)}``.

    ``n`` (default 1) is the 1-based hit at which the point acts; ``action`` defaults to
    ``kill``.

    Raises:
        ValueError: malformed item, ``n < 1`` or an unknown action (the item is named).
    """
    out: dict[str, tuple[int, str]] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) > 3 or not parts[0]:
            raise ValueError(f"{ENV}: malformed item {item!r}; expected name[:n[:action]]")
        try:
            n = int(parts[1]) if len(parts) > 1 and parts[1] else 1
        except ValueError:
            raise ValueError(f"{ENV}: hit count of {item!r} is not an integer") from None
        action = parts[2] if len(parts) > 2 else "kill"
        if n < 1 or action not in _ACTIONS:
            raise ValueError(f"{ENV}: item {item!r} needs n >= 1 and an action in {_ACTIONS}")
        out[parts[0]] = (n, action)
    return out


def reset() -> None:
    """Forget the hit counts of this process (tests that inject in-process)."""
    with _lock:
        _hits.clear()


def point(name: str) -> None:
    """Mark a fault-injection point; acts only when ``LEADER_FAULT`` names it (see module doc).

    Raises:
        OSError: ``enospc`` / ``erofs`` actions.
        InjectedFault: ``raise`` action.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return
    target = parse_spec(spec).get(name)
    if target is None:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    n, action = target
    if hit != n:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected at {name})")
    elif action == "erofs":
        raise OSError(errno.EROFS, f"{os.strerror(errno.EROFS)} (injected at {name})")
    else:
        raise InjectedFault(f"fault injected at {name} (hit {hit})")
