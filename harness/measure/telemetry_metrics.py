"""Metric-table rows for the NVML telemetry fields (harness/measure/telemetry.py TelemetrySummary).

Plain dicts for the lead's metrics table: field (TelemetrySummary attribute), label, unit,
better ("lower" | "higher" | None: not a figure of merit), plot (worth a chart per case).
"""

TELEMETRY_METRICS: list[dict] = [
    {"field": "energy_per_call_j", "label": "energy per call", "unit": "J", "better": "lower", "plot": True},
    {"field": "tflops_per_w", "label": "compute efficiency", "unit": "TFLOP/s/W", "better": "higher", "plot": True},
    {"field": "gbytes_per_s_per_w", "label": "bandwidth efficiency", "unit": "GB/s/W", "better": "higher", "plot": False},
    {"field": "mean_power_w", "label": "mean power", "unit": "W", "better": None, "plot": True},
    {"field": "sm_clock_median_mhz", "label": "SM clock (median)", "unit": "MHz", "better": None, "plot": True},
    {"field": "sm_clock_min_mhz", "label": "SM clock (min)", "unit": "MHz", "better": None, "plot": False},
    {"field": "sm_clock_max_mhz", "label": "SM clock (device max)", "unit": "MHz", "better": None, "plot": False},
    {"field": "mem_clock_median_mhz", "label": "memory clock (median)", "unit": "MHz", "better": None, "plot": False},
    {"field": "max_temperature_c", "label": "max temperature", "unit": "°C", "better": None, "plot": False},
    {"field": "energy_source", "label": "energy source", "unit": None, "better": None, "plot": False},
    {"field": "throttled", "label": "throttled", "unit": None, "better": None, "plot": False},
    {"field": "throttle_reason", "label": "throttle reason", "unit": None, "better": None, "plot": False},
]
