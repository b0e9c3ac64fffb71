"""Retry policy: retries belong on I/O (flaky disks, network stores), never on bad data or training math."""

from __future__ import annotations

# Errors that the same call cannot fix by trying again: the user must act.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def retry_on_io(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry transient OS/network errors only."""
    try:
        state.result()
    except _PERMANENT:
        return False
    except (OSError, TimeoutError, ConnectionError):
        return True
    except Exception:  # noqa: BLE001 (bad data or a bug: the same call fails again, so no retry)
        return False
    return False
