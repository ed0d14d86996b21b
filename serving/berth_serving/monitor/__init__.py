"""Model monitoring: baseline statistics of a dataset, and drift checks of captured data against them.

`berth monitor baseline` and `berth monitor run` (the MonitoringSchedule CronJob's pod); the
engine is DuckDB over local files (s3:// objects are spooled to disk first).
"""
