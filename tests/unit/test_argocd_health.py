"""The Argo CD health check (charts/kubetune/files/argocd-health.lua), run by a real Lua 5.1
(what Argo CD's gopher-lua implements) with the libraries Argo CD leaves open, against
FineTuneJobs whose status is built the way the operator builds it: the status model and its
kstatus conditions. A quick check; tests/integration/test_gitops_health.py runs the same
script under gopher-lua itself, next to kstatus, on what the real operator writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.phases import ACTIVE_PHASES, Phase
from kubetune.api.status import FineTuneJobStatus
from kubetune.operator.conditions import with_kstatus

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
    # Argo CD opens only the base, table and package libraries and an os with time and
    # date (util/lua/lua.go, UseOpenLibs false): no string, math, io or debug.
    for closed in ("string", "math", "io", "debug", "coroutine", "dofile", "loadfile"):
        g[closed] = None
    g.os = rt.eval("{time = os.time, date = os.date}")
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
        conds = with_kstatus(
            [], Phase(phase), phase, message or "", observed or 1, NOW, stalled=stalled
        )
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


@pytest.mark.parametrize("phase", sorted(ACTIVE_PHASES))
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


def test_waiting_for_capacity_is_progressing_until_it_stalls() -> None:
    waiting = "waiting for capacity since 2025-01-01T00:00:00Z: 0/3 nodes are available"
    assert health(job("Pending", waiting)) == ("Progressing", waiting)
    stalled = "no capacity after 30m00s (capacityGraceSeconds): 0/3 nodes are available"
    assert health(job("Pending", stalled, stalled=True)) == ("Degraded", stalled)
    assert health(job("Queued", stalled, stalled=True))[0] == "Degraded"


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


@pytest.mark.parametrize("phase", list(Phase))
def test_stale_observed_generation_is_progressing_in_every_phase(phase: Phase) -> None:
    """As kstatus: until the operator has looked at the new spec, even a finished job is
    in progress (the operator observes every generation, finished or not)."""
    status, message = health(job(phase, "m", generation=3, observed=2))
    assert status == "Progressing"
    assert "generation 3" in message


def test_stalled_while_active_is_degraded_with_its_message() -> None:
    obj = job("Pending", "secret hf-token not found", stalled=True)
    assert health(obj) == ("Degraded", "secret hf-token not found")


def test_unknown_phase_is_unknown() -> None:
    obj = job("Running")
    obj["status"]["phase"] = "Exploding"
    assert health(obj)[0] == "Unknown"


def test_every_phase_of_the_api_is_mapped() -> None:
    expected = {"Succeeded": "Healthy", "Failed": "Degraded", "Suspended": "Suspended"}
    for phase in Phase:
        assert health(job(phase, "m"))[0] == expected.get(phase, "Progressing"), phase


def test_the_script_names_exactly_the_api_phases() -> None:
    """The Lua cannot import kubetune.api.phases: its phase names are checked instead."""
    named = set(re.findall(r'phase == "(\w+)"', LUA_FILE.read_text()))
    assert named == {str(p) for p in Phase}


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
