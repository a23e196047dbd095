"""The top of the house: Prefect flows and the ``vqa`` command line, driving both stages.

The only package that imports ``pipeline``, ``feature_store`` and ``regressors`` together.
It also holds the fit and predict jobs (``flows.fit``, ``flows.fit_data``): they join the
store, the manifest and the heads, so they cannot live in any one library package, and they
are plain functions so that ``vqa fit`` pays no Prefect start-up (``flows.jobs`` wraps them
in flows for deployments). What a run decides before Prefect starts lives in
``flows.preflight`` and ``flows.extract_plan``; see docs/architecture.md.
"""
