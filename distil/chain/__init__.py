"""``distil pipeline run``: the whole chain from one typed config, each stage its own job (a Ray
job through the job API when there is a Ray address, else a local process), each skipped when its
committed output's fingerprint matches, so running the command again resumes a stopped chain.

Modules: ``config`` (PipelineConfig, the step names), ``plan`` (the chain: which step feeds which,
``run``), ``steps`` (running or reusing one step, locally or as a Ray job). ``distil demo`` is this
chain on the sample data, plus scoring and a report.
"""
