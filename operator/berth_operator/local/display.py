"""What `berth up` shows: a live table on a terminal, plain log lines otherwise. Pure text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .interceptor import PHASE_NAMES

COLUMNS = ("ENDPOINT", "PHASE", "CONFIG", "VARIANTS", "URL")

Serverless = Mapping[tuple[str, str], dict[str, Any]]  # (config, variant) -> the interceptor's entry
# (config, variant) of a MultiModel variant -> the models its replicas hold (each once)
HeldModels = Mapping[tuple[str, str], set[str]]
SHOWN_MODELS = 4  # per replica in the details; the rest are counted


def _variant_parts(
    variants: list[dict[str, Any]], total: float, config: str, serverless: Serverless, held_models: HeldModels
) -> list[str]:
    parts = []
    for v in variants:
        share = 100.0 * float(v.get("currentWeight", 0)) / total if total else 0.0
        ready_count, desired = v.get("readyInstanceCount", 0), v.get("desiredInstanceCount", 0)
        ready = f"{ready_count}/{desired}"
        queued = f" queue {v['backlogSize']}" if v.get("backlogSize") is not None else ""  # async variants
        held = serverless.get((config, v["variantName"]))
        if held is not None:  # serverless: at zero it is idle, not missing
            if not ready_count and not desired and not held.get("coldStarting"):
                ready += " (idle)"
            elif held.get("held"):
                ready += f" held {held['held']}"
        held_keys = held_models.get((config, v["variantName"]))
        if held_keys is not None:  # MultiModel: how many of its models are loaded somewhere
            ready += f" {len(held_keys)} model{'s' if len(held_keys) != 1 else ''} loaded"
        parts.append(f"{v['variantName']} {share:.0f}% {ready}{queued}")
    return parts


def variants_cell(
    status: dict[str, Any], serverless: Serverless | None = None, held_models: HeldModels | None = None
) -> str:
    """Serving variants, then the pending config's during a rollout; shares of all traffic."""
    serverless = serverless or {}
    held_models = held_models or {}
    serving = status.get("productionVariants", [])
    pending = status.get("pendingProductionVariants", [])
    total = sum(float(v.get("currentWeight", 0)) for v in serving + pending)
    config = status.get("endpointConfigName") or ""
    cell = ", ".join(_variant_parts(serving, total, config, serverless, held_models)) or "-"
    if pending:
        pending_config = status.get("pendingEndpointConfigName") or ""
        cell += " -> " + ", ".join(_variant_parts(pending, total, pending_config, serverless, held_models))
    return cell


def _serverless(ep: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(item.get("config", ""), item.get("variant", "")): item for item in ep.get("serverless", [])}


def _held_models(ep: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    held: dict[tuple[str, str], set[str]] = {
        (item.get("config", ""), item.get("variant", "")): set() for item in ep.get("multiModel", [])
    }
    for replica in ep.get("replicas", []):
        keys = held.get((replica.get("config", ""), replica.get("variant", "")))
        if keys is not None:
            keys.update(m["key"] for m in replica.get("models", []))
    return held


def held_line(replica: dict[str, Any]) -> str:
    """`customer-1, customer-4, +3 more (2.1 MiB)`: what a MultiModel replica holds."""
    from berth_serving.fetch import human_size

    models = replica.get("models", [])
    if not models:
        return "no model loaded"
    keys = [m["key"] for m in models]
    shown = ", ".join(keys[:SHOWN_MODELS]) + (
        f", +{len(keys) - SHOWN_MODELS} more" if len(keys) > SHOWN_MODELS else ""
    )
    return f"{shown} ({human_size(sum(int(m.get('bytes', 0)) for m in models))})"


def multi_model_hint(snapshot: dict[str, Any]) -> str:
    """How to call a MultiModel endpoint (a request names its model), or "" when none is served."""
    for ep in snapshot.get("endpoints", []):
        url = ep.get("status", {}).get("url")
        if ep.get("multiModel") and url:
            return (
                f"A multi-model endpoint names its model: curl -H 'X-Berth-Target-Model: NAME.onnx' "
                f"-H 'Content-Type: application/json' -d '[[...]]' {url}"
            )
    return ""


def cold_start_line(item: dict[str, Any]) -> str:
    """`variant main: last cold start 1.23 s (scheduled 0.01 s, ...), 3 cold starts`, or ""."""
    last = item.get("lastColdStart")
    if not last:
        return ""
    phases = ", ".join(
        f"{PHASE_NAMES.get(name, name)} {seconds:.2f} s" for name, seconds in last["phases"].items()
    )
    count = item.get("coldStarts", 0)
    return (
        f"variant {item.get('variant') or item.get('deployment')}: last cold start "
        f"{last['totalSeconds']:.2f} s ({phases}), {count} cold start{'s' if count != 1 else ''}"
    )


def config_cell(status: dict[str, Any]) -> str:
    config = status.get("endpointConfigName") or "-"
    pending = status.get("pendingEndpointConfigName")
    return f"{config} -> {pending}" if pending else config


def rows(snapshot: dict[str, Any]) -> list[tuple[str, ...]]:
    result: list[tuple[str, ...]] = []
    for ep in snapshot.get("endpoints", []):
        status = ep.get("status", {})
        result.append(
            (
                f"{ep['namespace']}/{ep['name']}",
                status.get("phase") or "Pending",
                config_cell(status),
                variants_cell(status, _serverless(ep), _held_models(ep)),
                status.get("url") or "-",
            )
        )
    return result


def table(snapshot: dict[str, Any]) -> str:
    lines = [COLUMNS, *rows(snapshot)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def details(snapshot: dict[str, Any]) -> str:
    """Replicas that are not simply running, and failure reasons, under the table."""
    lines = []
    for ep in snapshot.get("endpoints", []):
        reason = ep.get("status", {}).get("failureReason")
        if reason:
            lines.append(f"{ep['namespace']}/{ep['name']}: {reason}")
        for item in ep.get("serverless", []):
            for line in (cold_start_line(item), item.get("lastError", "")):
                if line:
                    lines.append(f"  {line}")
        for item in ep.get("multiModel", []):
            lines.append(
                f"  variant {item.get('variant')}: MultiModel, the models under {item.get('prefix')}"
            )
        for replica in ep.get("replicas", []):
            restarts = replica.get("restarts", 0)
            if replica.get("state") != "Running" or restarts:
                note = f" (restarts {restarts})" if restarts else ""
                error = f": {replica['lastError']}" if replica.get("lastError") else ""
                lines.append(f"  {replica['name']} {replica.get('state')}{note}{error}")
            elif "models" in replica:
                lines.append(f"  {replica['name']} holds {held_line(replica)}")
    return "\n".join(lines)


def screen(snapshot: dict[str, Any], footer: str) -> str:
    """A full terminal frame: home, clear, the table, details, the schedules, footer."""
    body = table(snapshot)
    extra = details(snapshot)
    schedules = "\n".join(part for part in (monitoring_table(snapshot), monitoring_details(snapshot)) if part)
    return (
        "\x1b[H\x1b[2J"
        + body
        + ("\n\n" + extra if extra else "")
        + ("\n\n" + schedules if schedules else "")
        + "\n\n"
        + footer
        + "\n"
    )


# ---------------------------------------------------------------- MonitoringSchedules

MONITORING_COLUMNS = ("SCHEDULE", "ENDPOINT", "CRON", "NEXT RUN", "LAST EXECUTION", "DRIFT")


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next((c for c in status.get("conditions", []) if c.get("type") == kind), {})
    return found


def execution_cell(item: dict[str, Any]) -> str:
    """`2000 records, 1 violation (f2)` of the last execution; `running JOB` while one runs."""
    if item.get("running"):
        return f"running {item['running']}"
    last = item.get("status", {}).get("lastExecution")
    if not last:
        return "-"
    count = last.get("violations", 0)
    features = last.get("violatedFeatures") or []
    shown = f" ({', '.join(features)})" if features else ""
    return f"{last.get('recordsRead', 0)} records, {count} violation{'s' if count != 1 else ''}{shown}"


def next_run_cell(item: dict[str, Any]) -> str:
    if item.get("suspend"):
        return "suspended"
    return str(item.get("nextRun") or "-")


def drift_cell(item: dict[str, Any]) -> str:
    drift = _condition(item.get("status", {}), "Drift")
    return f"{drift['status']} {drift.get('reason', '')}".rstrip() if drift else "-"


def monitoring_rows(snapshot: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            f"{item['namespace']}/{item['name']}",
            item.get("endpoint", ""),
            item.get("schedule", ""),
            next_run_cell(item),
            execution_cell(item),
            drift_cell(item),
        )
        for item in snapshot.get("monitoring", [])
    ]


def monitoring_table(snapshot: dict[str, Any]) -> str:
    """The schedules' table, or "" when there is none."""
    found = monitoring_rows(snapshot)
    if not found:
        return ""
    lines = [MONITORING_COLUMNS, *found]
    widths = [max(len(line[i]) for line in lines) for i in range(len(MONITORING_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def condition_messages(item: dict[str, Any]) -> list[str]:
    """`Drift: ...` always, `Ready: ...` when it is not Ready, and why no run can start here."""
    status = item.get("status", {})
    lines = []
    ready = _condition(status, "Ready")
    if ready and ready.get("status") != "True":
        lines.append(f"Ready: {ready.get('message', '')}")
    drift = _condition(status, "Drift")
    if drift:
        lines.append(f"Drift: {drift.get('message', '')}")
    if item.get("problem"):
        lines.append(str(item["problem"]))
    return lines


def monitoring_details(snapshot: dict[str, Any]) -> str:
    return "\n".join(
        f"{item['namespace']}/{item['name']}: {line}"
        for item in snapshot.get("monitoring", [])
        for line in condition_messages(item)
    )


def monitoring_lines(snapshot: dict[str, Any]) -> dict[str, str]:
    """One log line per schedule, keyed by schedule, printed whenever it changes."""
    lines = {}
    for item, row in zip(snapshot.get("monitoring", []), monitoring_rows(snapshot), strict=True):
        messages = "; ".join(condition_messages(item))
        lines[f"monitoring {row[0]}"] = (
            f"monitoring {row[0]}: endpoint={row[1]} schedule={row[2]!r} next={row[3]} last=[{row[4]}]"
            f" drift={row[5].replace(' ', '/')}" + (f" ({messages})" if messages else "")
        )
    return lines


def summary_lines(snapshot: dict[str, Any]) -> dict[str, str]:
    """One log line per endpoint, keyed by endpoint, printed whenever it changes."""
    lines = {}
    for ep, row in zip(snapshot.get("endpoints", []), rows(snapshot), strict=True):
        key = f"{ep['namespace']}/{ep['name']}"
        line = f"endpoint {row[0]}: {row[1]} config={row[2]} variants=[{row[3]}] url={row[4]}"
        reason = ep.get("status", {}).get("failureReason")
        lines[key] = line + (f" reason={reason}" if reason else "")
        for item in ep.get("serverless", []):
            cold = cold_start_line(item)
            if cold:
                lines[f"{key} {item['deployment']}"] = f"endpoint {key} {cold}"
    return lines


def replica_lines(snapshot: dict[str, Any]) -> dict[str, str]:
    lines = {}
    for ep in snapshot.get("endpoints", []):
        for replica in ep.get("replicas", []):
            error = f" error={replica['lastError']}" if replica.get("lastError") else ""
            held = f" models={len(replica['models'])}" if "models" in replica else ""
            lines[replica["name"]] = (
                f"replica {replica['name']}: {replica.get('state')} ready={replica.get('ready', False)}"
                f" restarts={replica.get('restarts', 0)}{held}{error}"
            )
    return lines
