"""The Argo CD health check (charts/kubetune/files/argocd-health.lua), run by a real Lua 5.1
(what Argo CD's gopher-lua implements) against FineTuneJobs whose status is built the way the
operator builds it: the status model and its kstatus conditions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.status import FineTuneJobStatus
from kubetune.operator.conditions import ACTIVE_PHASES, with_kstatus

lupa = pytest.importorskip("lupa.lua51")

ROOT = Path(__file__).resolve().parents[2]
LUA_FILE = ROOT / "charts/kubetune/files/argocd-health.lua"
GITOPS_DOC = ROOT / "docs/gitops.md"
NOW = "2025-01-01T00:00:00Z"


def _to_lua(rt: Any, value: Any) -> Any:
    """JSON → Lua the way Argo CD converts objects: maps and arrays become tables."""
    if isinstance(value, dict):
        return rt.table_from({k: _to_lua(rt, v) for k, v in value.items()})
    if isinstance(value, list):
        return rt.table_from([_to_lua(rt, v) for v in value])
    return value


def health(obj: dict[str, Any], script: str | None = None) -> tuple[str, str]:
    rt = lupa.LuaRuntime(register_eval=False, unpack_returned_tuples=True)
    g = rt.globals()
    for unsafe in ("os", "io", "require", "dofile", "loadfile", "load", "loadstring"):
        g[unsafe] = None  # Argo CD's sandbox has none of these
    g.obj = _to_lua(rt, obj)
    result = rt.execute(script if script is not None else LUA_FILE.read_text())
    return str(result["status"]), str(result["message"])


def job(
    phase: str | None,
    message: str | None = None,
    generation: int = 1,
    observed: int | None = 1,
    stalled: bool = False,
    **status: Any,
) -> dict[str, Any]:
    """A FineTuneJob as the API server returns it, with a status the operator would write."""
    st: dict[str, Any] = {}
    if phase is not None:
        conds = with_kstatus([], phase, phase, message or "", observed or 1, NOW, stalled=stalled)
        st = FineTuneJobStatus.model_validate(
            {
                "phase": phase,
                "message": message,
                "conditions": conds,
                "observedGeneration": observed,
                **status,
            }
        ).to_k8s()
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "support-bot-lora", "namespace": "ml", "generation": generation},
        "spec": {"method": "lora"},
        **({"status": st} if phase is not None else {}),
    }


def test_succeeded_is_healthy_with_the_status_message() -> None:
    obj = job(
        "Succeeded",
        "Training finished: eval loss 1.21 (baseline 1.87)",
        completionTime=NOW,
        output={"adapter": "/models/support-bot/adapter"},
        progress={"step": 300, "totalSteps": 300, "percent": 100.0, "loss": 1.1},
    )
    assert health(obj) == ("Healthy", "Training finished: eval loss 1.21 (baseline 1.87)")


@pytest.mark.parametrize("phase", ACTIVE_PHASES)
def test_active_phases_are_progressing(phase: str) -> None:
    msg = f"{phase}: step 120/300, loss 1.42"
    assert health(job(phase, msg, progress={"step": 120, "totalSteps": 300})) == (
        "Progressing",
        msg,
    )


def test_failed_is_degraded() -> None:
    msg = "trainer OOMKilled on attempt 3 of 3: raise resources or lower maxSeqLength"
    assert health(job("Failed", msg, restarts=2, attempt=3, completionTime=NOW)) == (
        "Degraded",
        msg,
    )


def test_suspended_is_suspended() -> None:
    msg = "suspended by spec.suspend; checkpoint at step 80 kept"
    assert health(job("Suspended", msg)) == ("Suspended", msg)


def test_no_status_yet_is_progressing() -> None:
    status, message = health(job(None))
    assert status == "Progressing"
    assert "operator" in message


def test_empty_status_object_is_progressing() -> None:
    obj = job(None)
    obj["status"] = {}
    assert health(obj)[0] == "Progressing"


def test_default_messages_when_the_operator_wrote_none() -> None:
    assert health(job("Succeeded")) == ("Healthy", "Fine-tuning succeeded")
    assert health(job("Failed")) == ("Degraded", "Fine-tuning failed")
    assert health(job("Running")) == ("Progressing", "Running")


def test_stale_observed_generation_is_progressing() -> None:
    status, message = health(job("Suspended", "suspended", generation=3, observed=2))
    assert status == "Progressing"
    assert "generation 3" in message


def test_terminal_phases_ignore_generation() -> None:
    assert health(job("Succeeded", "done", generation=3, observed=2))[0] == "Healthy"
    assert health(job("Failed", "boom", generation=3, observed=2))[0] == "Degraded"


def test_stalled_while_active_is_degraded_with_its_message() -> None:
    obj = job("Pending", "secret hf-token not found", stalled=True)
    assert health(obj) == ("Degraded", "secret hf-token not found")


def test_unknown_phase_is_unknown() -> None:
    obj = job("Running")
    obj["status"]["phase"] = "Exploding"
    assert health(obj)[0] == "Unknown"


def test_every_phase_of_the_api_is_mapped() -> None:
    phases = FineTuneJobStatus.model_json_schema()["properties"]["phase"]["anyOf"][0]["enum"]
    expected = {"Succeeded": "Healthy", "Failed": "Degraded", "Suspended": "Suspended"}
    for phase in phases:
        assert health(job(phase, "m"))[0] == expected.get(phase, "Progressing"), phase


def test_docs_ship_the_same_script() -> None:
    """docs/gitops.md embeds the argocd-cm snippet; its Lua must be the shipped file's."""
    doc = GITOPS_DOC.read_text()
    m = re.search(
        r"resource\.customizations\.health\.kubetune\.io_FineTuneJob: \|\n(.*?)\n```",
        doc,
        re.S,
    )
    assert m, "docs/gitops.md lacks the argocd-cm snippet"
    lines = m.group(1).splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    embedded = "\n".join(line[indent:] for line in lines) + "\n"
    assert embedded == LUA_FILE.read_text()
    assert health(job("Failed", "x"), script=embedded) == ("Degraded", "x")
