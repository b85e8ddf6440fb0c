"""The BentoML scoring service (``service.app:AnomalyVAE``), its metrics, batching and request
guard, and the monitoring files in ``service/monitoring/``."""
