"""Which requests are captured: decided by the inference id alone, so the same id is always
sampled the same way (a retried request, or another caller of the same id, agrees)."""

from __future__ import annotations

from zlib import crc32

# Sampling resolution: 1/100 of a percent, so a samplingPercentage of 0.5 works.
SAMPLING_BUCKETS = 10_000


def threshold(percentage: float) -> int:
    """crc32 buckets below this value are sampled."""
    return round(percentage * SAMPLING_BUCKETS / 100)


def sampled(inference_id: bytes, percentage: float) -> bool:
    return crc32(inference_id) % SAMPLING_BUCKETS < threshold(percentage)
