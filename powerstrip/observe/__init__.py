"""What the proxy tells its operators: counters and histograms (``stats``), their Prometheus
form (``prometheus``), the audit log (``audit``) and the live trace (``trace``)."""
