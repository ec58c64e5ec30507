"""A stand-in for ``StepRunner.execute`` in the chain's and the demo's plan tests: each stage
commits its output where the real one would and prints the result keys the plan reads."""

from __future__ import annotations

import json

from distil import storage
from distil.score.scored import run_dir


class FakeStages:
    """Stands in for ``StepRunner.execute``: commits where the real stage would and prints the
    result keys the plan reads."""

    def __init__(self, gate_fails: bool = False):
        self.ran: list[list[str]] = []
        self.gate_fails = gate_fails

    def __call__(self, st):
        self.ran.append(st.argv)
        a = st.argv

        def arg(flag):
            return a[a.index(flag) + 1] if flag in a else None

        out, result = arg("--output"), {}
        if st.name == "logits":
            out = storage.join(arg("--cache-root"), "cache-" + st.fingerprint)
            result["cache_url"] = out
        if st.name.startswith("finetune"):
            out = storage.join(out, "model")
            result |= {"model_url": out, "teacher_cache": "memory://task-cache"}
        if st.name == "pool":
            out = storage.join(out, "teacher-logits")
            result |= {"teacher_cache": out, "pool": storage.join(arg("--output"), "pool")}
        if st.name == "score":
            out = run_dir(out, arg("--run-id"))
        if st.name == "gate":
            figures = {"teacher_share": 0.5 if self.gate_fails else 1.0}
            failed = ["the student keeps 0.5 of the teacher's accuracy"] if self.gate_fails else []
            record = {"passed": not failed, "failed": failed, "figures": figures}
            storage.write_json(storage.join(out, "gate.json"), record)
            if failed:
                raise RuntimeError("gate failed with exit code 1")
            storage.commit(out, {"kind": "gate", "passed": True, "figures": figures})
            return "DISTIL_RESULT " + json.dumps({"output": out}) + "\n"
        storage.commit(out, {"fingerprint": "f"})
        return "DISTIL_RESULT " + json.dumps(result) + "\n"
