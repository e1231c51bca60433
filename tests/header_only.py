"""A stand-in for ``safetensors.safe_open`` that reads a file's header (its keys, its metadata) and fails the test
on any tensor read: for loaders that must refuse a file from its header alone (a multi-GB checkpoint named by
mistake was read whole before the refusal). Use: ``monkeypatch.setattr(module, "safe_open", header_only())``."""
import pytest
import safetensors


def header_only():
    opened = safetensors.safe_open

    class HeaderOnly:
        def __init__(self, *a, **k):
            self.f = opened(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def metadata(self):
            return self.inner.metadata()

        def get_tensor(self, k):
            pytest.fail(f"read {k} of a file it refuses")

    return HeaderOnly
