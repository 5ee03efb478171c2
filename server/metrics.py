"""Prometheus metrics. One registry per application (tests build many); with several worker
processes the values go through prometheus_client's multiprocess directory, which the parent
process sets up (`PROMETHEUS_MULTIPROC_DIR`) and `/metrics` then aggregates."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "kiln_http_request_seconds", "HTTP requests by route and status",
            ["method", "route", "status"], registry=self.registry)
        self.events = Counter("kiln_events_ingested", "Events stored",
                              registry=self.registry)
        self.duplicate_events = Counter("kiln_events_duplicate",
                                        "Events received again and ignored",
                                        registry=self.registry)
        self.rejected_batches = Counter("kiln_event_batches_rejected",
                                        "Event batches refused", ["reason"],
                                        registry=self.registry)
        self.uploaded_bytes = Counter("kiln_upload_bytes", "Bytes received in uploads",
                                      registry=self.registry)
        self.ddi_polls = Counter("kiln_ddi_polls", "DDI root polls answered, by where the "
                                 "answer came from (cache, database)", ["answer"],
                                 registry=self.registry)
        self.credential_reveals = Counter("kiln_credential_reveals",
                                          "Credentials revealed to operators",
                                          registry=self.registry)

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
