"""Test helper for the subprocess scripts: record every request a module's engine runs draw."""

from __future__ import annotations


def record_requests(module) -> list:
    """Wrap ``module.run`` (the engine's ``run`` as ``module`` imported it) so that every
    request it is given is appended to the returned list, which the caller may clear."""
    recorded = []
    run = module.run

    def recording_run(requests, sink, **kw):
        requests = list(requests)
        recorded.extend(requests)
        return run(requests, sink, **kw)

    module.run = recording_run
    return recorded
