"""KD student vs MLM-only student: same cache, size, steps, batches and seed; one process, no Ray.

    python scripts/kd_vs_mlm.py --cache s3://distil/cache/KEY --steps 500 --batch-size 32

Runs the distillation recipe twice, with the configured alphas (default DistilBERT 5/2) and with
``alpha_ce=0`` (MLM only), then prints both students' held-out teacher agreement, MLM accuracy
and KL to the teacher (acceptance 4 of issue 5). Any other ``DistilConfig`` flag passes through.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distil.config import add_config_args, config_from_args  # noqa: E402
from distil.train.config import DistilConfig  # noqa: E402
from distil.train.recipe import DistilRecipe  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per student")
    add_config_args(parser, DistilConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tmp = tempfile.mkdtemp(prefix="kd-vs-mlm-")
    defaults = {"output": f"{tmp}/out", "storage_path": f"{tmp}/runs"}
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    base = config_from_args(DistilConfig, args).model_copy(
        update={"max_steps": args.steps, "eval_every": args.steps}
    )
    out = {}
    for name, update in [("kd", {}), ("mlm_only", {"alpha_ce": 0.0})]:
        cfg = base.model_copy(update=update)
        recipe = DistilRecipe(cfg, work_dir=f"{tmp}/{name}")
        recipe.setup(None)
        if name == "kd":  # both start from the same teacher-initialised student
            out["init"] = recipe.evaluate()
        m = recipe.train()
        out[name] = {
            k: m.get(k)
            for k in (
                "alpha_ce",
                "alpha_mlm",
                "step",
                "eval_positions",
                "eval_teacher_agreement",
                "eval_mlm_accuracy",
                "eval_kl_to_teacher",
            )
        }
    out["agreement_gain"] = (
        out["kd"]["eval_teacher_agreement"] - out["mlm_only"]["eval_teacher_agreement"]
    )
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
