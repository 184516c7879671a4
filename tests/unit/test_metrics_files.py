"""The merged scrape of several API workers' metric files (api/metrics.py, WorkerFiles)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from flashsale.api.metrics import WorkerFiles
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector


def _counter_file(directory: Path, pid: int, value: float) -> None:
    name = "flashsale_reservations"
    key = mmap_key(name, f"{name}_total", ["outcome"], ["created"], "Reservations")
    written = MmapedDict(str(directory / f"counter_{pid}.db"))
    written.write_value(key, value, 0.0)
    written.close()


def test_a_file_a_worker_has_created_but_not_yet_sized_is_skipped_not_a_failed_scrape(tmp_path: Path) -> None:
    _counter_file(tmp_path, 101, 7)
    _counter_file(tmp_path, 102, 13)
    (tmp_path / "histogram_103.db").touch()  # a worker between creating its file and sizing it

    # What prometheus_client's own collector does with that directory (client_python#1199):
    plain = CollectorRegistry()
    MultiProcessCollector(plain, path=str(tmp_path))  # type: ignore[no-untyped-call]
    with pytest.raises(struct.error):
        generate_latest(plain)

    merged = CollectorRegistry()
    merged.register(WorkerFiles(str(tmp_path)))
    text = generate_latest(merged).decode()
    assert 'flashsale_reservations_total{outcome="created"} 20.0' in text
