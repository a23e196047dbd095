"""Small helpers shared by every package of the project, importing none of them.

``pipeline``, ``feature_store`` and ``regressors`` never import each other; what all of them
need once (a registry with did-you-mean lookups, an atomic file write, the manifest that both
stages key by video id) lives here instead of being written once per package.
"""
