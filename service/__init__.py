"""The BentoML scoring service (``service.app:AnomalyVAE``, a thin adapter over ``service.scorer.Scorer``),
its settings (``service.settings``), answers (``service.schemas``), metrics, batching, request guard and
OpenAPI document, and the monitoring files in ``service/monitoring/``."""
