"""The CLI behind ``cli.py`` (the ``module14`` console script), one file per job:

- ``parser``: exact flags, one-line usage errors, values a config leaves open filled in (data root, logger folder);
- ``checkpoints``: ``--ckpt_path`` read safely, found by name (best, last, a requeued job's), merged into the config;
- ``checks``: settings checked against each other before any work;
- ``cli``: ``Module14CLI``, which puts them together with the always-on callbacks and the precision rule.
"""
