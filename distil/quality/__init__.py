"""Measuring quality: held-out teacher-vs-student metrics (``eval``, the ``distil eval``
command), the recipe's ablation (``ablation``, its rows in ``config``, its table in ``table``)
and the demo's report (``report``). Reads what the stages wrote; no stage imports it."""
